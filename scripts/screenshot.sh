#!/usr/bin/env bash
# Makes the README's screenshots: the app under Xvfb on the tiny fixture model, driven through the
# keyboard and mouse (xdotool). Needs xvfb, xdotool and ImageMagick.
#   scripts/screenshot.sh [OUT]        one generation typed in  (assets/screenshot.png)
#   scripts/screenshot.sh --edit [OUT] an inpainting of the committed chirp, a range dragged on
#                                      its spectrogram           (assets/screenshot-edit.png)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=generate
if [ "${1:-}" = "--edit" ]; then
    mode=edit
    shift
fi
if [ "$mode" = edit ]; then
    out="${1:-assets/screenshot-edit.png}"
    size=(1200 900)
else
    out="${1:-assets/screenshot.png}"
    size=(1200 760)
fi
# AUDIOLDM_BIN picks an already built binary (e.g. target/debug/audioldm).
bin="${AUDIOLDM_BIN:-target/release/audioldm}"
[ -n "${AUDIOLDM_BIN:-}" ] || cargo build --release --locked
work="$(mktemp -d)"
export XDG_DATA_HOME="$work/data" XDG_CONFIG_HOME="$work/config"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$work/run}"
mkdir -p "$XDG_RUNTIME_DIR"
unset WAYLAND_DISPLAY
if [ "$mode" = edit ]; then
    # Coordinates of the 1200x900 layout: the Inpaint button, the clip's spectrogram from 0.20 s
    # to 0.30 s, and Generate edit below the range it lists.
    drive="
    xdotool type --delay 40 'a bird chirping'
    sleep 2
    xdotool mousemove 491 378 click 1
    sleep 1
    xdotool mousemove 624 270 mousedown 1
    for x in 660 700 746; do sleep 0.3; xdotool mousemove \$x 270; done
    sleep 0.3
    xdotool mouseup 1
    sleep 1
    xdotool mousemove 375 424 click 1
    sleep 40
    xdotool mousemove 1100 850"
    args="--input tests/fixtures/clips/chirp-16k.wav"
else
    drive="
    xdotool type --delay 20 'a dog barking in the rain'
    xdotool key ctrl+Return
    sleep 20"
    args=""
fi
xvfb-run -a -s "-screen 0 ${size[0]}x${size[1]}x24" sh -c "
    $bin app --model tests/fixtures/tiny $args & app=\$!
    sleep 15
    win=\$(xdotool search --sync --name AudioLDM | head -n 1)
    # No window manager under Xvfb: give the window the keyboard directly.
    xdotool windowmove \$win 0 0 windowsize \$win ${size[0]} ${size[1]} windowfocus --sync \$win
    sleep 2
    # The prompt box is the first field of the controls panel.
    xdotool mousemove 150 62 click 1
    $drive
    sleep 2
    import -window root '$out'
    kill \$app
"
echo "wrote $out"
