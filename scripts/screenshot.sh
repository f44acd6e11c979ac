#!/usr/bin/env bash
# Makes assets/screenshot.png for the README: the app under Xvfb on the tiny fixture model, after
# one generation typed in through the keyboard (xdotool). Needs xvfb, xdotool and ImageMagick.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-assets/screenshot.png}"
# AUDIOLDM_BIN picks an already built binary (e.g. target/debug/audioldm).
bin="${AUDIOLDM_BIN:-target/release/audioldm}"
[ -n "${AUDIOLDM_BIN:-}" ] || cargo build --release --locked
work="$(mktemp -d)"
export XDG_DATA_HOME="$work/data" XDG_CONFIG_HOME="$work/config"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$work/run}"
mkdir -p "$XDG_RUNTIME_DIR"
unset WAYLAND_DISPLAY
xvfb-run -a -s "-screen 0 1200x760x24" sh -c "
    $bin app --model tests/fixtures/tiny & app=\$!
    sleep 15
    win=\$(xdotool search --sync --name AudioLDM | head -n 1)
    # No window manager under Xvfb: give the window the keyboard directly.
    xdotool windowmove \$win 0 0 windowsize \$win 1200 760 windowfocus --sync \$win
    sleep 2
    # The prompt box is the first field of the controls panel.
    xdotool mousemove 150 62 click 1
    xdotool type --delay 20 'a dog barking in the rain'
    xdotool key ctrl+Return
    sleep 20
    import -window root '$out'
    kill \$app
"
echo "wrote $out"
