//! The mel-spectrogram view: the clip as a colour-mapped image with time and frequency axes and
//! a playback cursor.

use eframe::egui::{
    self, Align2, Color32, ColorImage, FontId, Pos2, Rect, Sense, Stroke, TextureHandle,
    TextureOptions, Vec2,
};

use crate::audio::Mel;
use crate::audio::mel::{F_MAX, F_MIN, FRAMES_PER_SECOND, hz_to_mel, mel_band_centres};

/// Anchors of matplotlib's "magma" colour map, dark to light.
const MAGMA: [[u8; 3]; 9] = [
    [0, 0, 4],
    [28, 16, 68],
    [79, 18, 123],
    [129, 37, 129],
    [181, 54, 122],
    [229, 80, 100],
    [251, 135, 97],
    [254, 194, 135],
    [252, 253, 191],
];

/// How many natural-log units below the peak the colour map spans (the rest is black): about
/// 52 dB, which shows the structure of a clip without its noise floor.
const DYNAMIC_RANGE: f32 = 12.0;

fn magma(t: f32) -> Color32 {
    let x = t.clamp(0.0, 1.0) * (MAGMA.len() - 1) as f32;
    let i = (x as usize).min(MAGMA.len() - 2);
    let f = x - i as f32;
    let lerp = |c: usize| (MAGMA[i][c] as f32 * (1.0 - f) + MAGMA[i + 1][c] as f32 * f) as u8;
    Color32::from_rgb(lerp(0), lerp(1), lerp(2))
}

/// The image of `mel`: time left to right, low frequencies at the bottom.
pub fn mel_image(mel: &Mel) -> ColorImage {
    let (width, height) = (mel.frames.max(1), mel.bins.max(1));
    let hi = mel.data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lo = mel
        .data
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min)
        .max(hi - DYNAMIC_RANGE);
    let span = (hi - lo).max(1e-6);
    let mut pixels = vec![Color32::BLACK; width * height];
    for frame in 0..mel.frames {
        for bin in 0..mel.bins {
            let value = mel.data.get(frame * mel.bins + bin).copied().unwrap_or(lo);
            pixels[(height - 1 - bin) * width + frame] = magma((value - lo) / span);
        }
    }
    ColorImage::new([width, height], pixels)
}

/// A spectrogram shown in the UI; the texture is remade only when the key changes.
#[derive(Default)]
pub struct SpectrogramView {
    texture: Option<(String, TextureHandle)>,
    frames: usize,
    /// Where a drag over the view started, in seconds.
    drag_from: Option<f64>,
}

/// What is drawn over a spectrogram: time ranges (shaded), a cutoff frequency (a line, the
/// bands above it shaded), and whether a drag selects a time range.
#[derive(Clone, Debug, Default)]
pub struct Overlay<'a> {
    pub ranges: &'a [(f64, f64)],
    pub cutoff_hz: Option<f64>,
    pub select_ranges: bool,
    /// The accessibility label of the view (tests find it by this).
    pub label: Option<&'a str>,
}

/// What the user did on a spectrogram this frame.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Interaction {
    /// A click, at this time in seconds (the app plays from there).
    pub clicked: Option<f64>,
    /// A drag that ended, over this time range in seconds (start before end).
    pub selected: Option<(f64, f64)>,
}

/// Where `hz` sits on a view of `bins` mel bands, as a fraction of the height from the bottom
/// (band `b` is drawn over `[b, b + 1) / bins`, its centre frequency in the middle).
fn frequency_fraction(hz: f64, bins: usize) -> f32 {
    let (lo, hi) = (hz_to_mel(F_MIN), hz_to_mel(F_MAX));
    let band = (hz_to_mel(hz) - lo) / (hi - lo) * (bins + 1) as f64 - 1.0;
    ((band + 0.5) / bins.max(1) as f64).clamp(0.0, 1.0) as f32
}

impl SpectrogramView {
    /// Number of mel frames of the spectrogram on screen (0 when none).
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Draws `mel` (named `key`; the same key reuses the uploaded image) at `height` points, with
    /// a cursor at `cursor_s` seconds. A click returns the time clicked (the app plays from there).
    pub fn show(
        &mut self,
        ui: &mut egui::Ui,
        key: &str,
        mel: &Mel,
        height: f32,
        cursor_s: Option<f64>,
    ) -> Option<f64> {
        self.show_with(ui, key, mel, height, cursor_s, &Overlay::default())
            .clicked
    }

    /// [`Self::show`] with `overlay` drawn over the image, and drags reported when it selects
    /// ranges.
    pub fn show_with(
        &mut self,
        ui: &mut egui::Ui,
        key: &str,
        mel: &Mel,
        height: f32,
        cursor_s: Option<f64>,
        overlay: &Overlay<'_>,
    ) -> Interaction {
        if self.texture.as_ref().is_none_or(|(k, _)| k != key) {
            let texture =
                ui.ctx()
                    .load_texture(format!("mel {key}"), mel_image(mel), TextureOptions::LINEAR);
            self.texture = Some((key.to_string(), texture));
            self.frames = mel.frames;
        }
        let sense = if overlay.select_ranges {
            Sense::click_and_drag()
        } else {
            Sense::click()
        };
        let (rect, response) =
            ui.allocate_exact_size(Vec2::new(ui.available_width(), height), sense);
        if let Some(label) = overlay.label {
            response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, label));
        }
        let plot = Rect::from_min_max(
            rect.min + Vec2::new(52.0, 4.0),
            rect.max - Vec2::new(6.0, 20.0),
        );
        let painter = ui.painter_at(rect);
        if let Some((_, texture)) = &self.texture {
            painter.image(
                texture.id(),
                plot,
                Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)),
                Color32::WHITE,
            );
        }
        let text = ui.visuals().text_color();
        let faint = ui.visuals().weak_text_color();
        painter.rect_stroke(
            plot,
            0.0,
            Stroke::new(1.0, faint),
            egui::StrokeKind::Outside,
        );
        let font = FontId::proportional(11.0);

        // Frequency axis: the band centres of the Slaney mel scale AudioLDM uses.
        let centres = mel_band_centres(mel.bins.max(1), F_MIN, F_MAX);
        for bin in [
            0,
            mel.bins / 4,
            mel.bins / 2,
            3 * mel.bins / 4,
            mel.bins.saturating_sub(1),
        ] {
            let Some(hz) = centres.get(bin) else { continue };
            let y = plot.bottom() - (bin as f32 + 0.5) / mel.bins.max(1) as f32 * plot.height();
            painter.line_segment(
                [Pos2::new(plot.left() - 4.0, y), Pos2::new(plot.left(), y)],
                Stroke::new(1.0, faint),
            );
            let label = if *hz >= 1000.0 {
                format!("{:.1} kHz", hz / 1000.0)
            } else {
                format!("{hz:.0} Hz")
            };
            painter.text(
                Pos2::new(plot.left() - 6.0, y),
                Align2::RIGHT_CENTER,
                label,
                font.clone(),
                text,
            );
        }

        // Time axis, ticks at a round interval.
        let seconds = mel.frames as f64 / FRAMES_PER_SECOND;
        let step = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .find(|s| seconds / s <= 10.0)
            .unwrap_or(20.0);
        let x_of = |t: f64| plot.left() + (t / seconds.max(1e-9)) as f32 * plot.width();
        let mut t = 0.0;
        while t <= seconds + 1e-9 {
            let x = x_of(t);
            painter.line_segment(
                [
                    Pos2::new(x, plot.bottom()),
                    Pos2::new(x, plot.bottom() + 4.0),
                ],
                Stroke::new(1.0, faint),
            );
            painter.text(
                Pos2::new(x, plot.bottom() + 5.0),
                Align2::CENTER_TOP,
                format!("{t:.*} s", if step < 1.0 { 2 } else { 0 }),
                font.clone(),
                text,
            );
            t += step;
        }

        let time_at =
            |p: Pos2| ((p.x - plot.left()) / plot.width()).clamp(0.0, 1.0) as f64 * seconds;
        let mut interaction = Interaction {
            clicked: response
                .clicked()
                .then(|| response.interact_pointer_pos())
                .flatten()
                .map(time_at),
            selected: None,
        };
        let mut pending = None;
        if overlay.select_ranges {
            if response.drag_started() {
                // Where the button went down: the drag is only recognised some points later.
                let origin = ui.input(|i| i.pointer.press_origin());
                self.drag_from = origin.or(response.interact_pointer_pos()).map(time_at);
            }
            let now = response.interact_pointer_pos().map(time_at);
            if let (Some(from), Some(to)) = (self.drag_from, now) {
                pending = Some((from.min(to), from.max(to)));
            }
            if response.drag_stopped() {
                interaction.selected = pending.take().filter(|(a, b)| b > a);
                self.drag_from = None;
            }
        }
        let shade = Color32::from_rgba_unmultiplied(80, 170, 255, 70);
        for &(start, end) in overlay.ranges.iter().chain(pending.as_ref()) {
            let area = Rect::from_x_y_ranges(
                x_of(start.max(0.0))..=x_of(end.min(seconds)),
                plot.top()..=plot.bottom(),
            );
            painter.rect_filled(area, 0.0, shade);
            painter.rect_stroke(
                area,
                0.0,
                Stroke::new(1.0, Color32::from_rgb(80, 170, 255)),
                egui::StrokeKind::Inside,
            );
        }
        if let Some(hz) = overlay.cutoff_hz {
            let y = plot.bottom() - frequency_fraction(hz, mel.bins) * plot.height();
            let above = Rect::from_x_y_ranges(plot.left()..=plot.right(), plot.top()..=y);
            painter.rect_filled(above, 0.0, shade);
            painter.line_segment(
                [Pos2::new(plot.left(), y), Pos2::new(plot.right(), y)],
                Stroke::new(2.0, Color32::from_rgb(80, 170, 255)),
            );
            painter.text(
                Pos2::new(plot.right() - 4.0, y - 2.0),
                Align2::RIGHT_BOTTOM,
                format!("cutoff {:.0} Hz", hz),
                font.clone(),
                Color32::WHITE,
            );
        }
        if let Some(cursor) = cursor_s.filter(|c| *c <= seconds) {
            let x = x_of(cursor);
            painter.line_segment(
                [Pos2::new(x, plot.top()), Pos2::new(x, plot.bottom())],
                Stroke::new(2.0, Color32::WHITE),
            );
        }
        interaction
    }
}

/// Draws the waveform of `samples` as a min/max envelope per pixel column.
pub fn waveform(ui: &mut egui::Ui, samples: &[f32], height: f32) {
    let (rect, _) = ui.allocate_exact_size(Vec2::new(ui.available_width(), height), Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 2.0, ui.visuals().extreme_bg_color);
    let columns = rect.width().max(1.0) as usize;
    if samples.is_empty() {
        return;
    }
    let peak = samples.iter().fold(1e-9f32, |m, s| m.max(s.abs()));
    let colour = ui.visuals().selection.bg_fill;
    for c in 0..columns {
        let start = c * samples.len() / columns;
        let end = ((c + 1) * samples.len() / columns)
            .max(start + 1)
            .min(samples.len());
        let (lo, hi) = samples[start..end]
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| {
                (lo.min(*s), hi.max(*s))
            });
        let x = rect.left() + c as f32 + 0.5;
        let y = |v: f32| rect.center().y - v / peak * rect.height() * 0.48;
        painter.line_segment(
            [Pos2::new(x, y(hi)), Pos2::new(x, y(lo))],
            Stroke::new(1.0, colour),
        );
    }
}
