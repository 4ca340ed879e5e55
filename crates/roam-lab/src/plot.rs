//! The goodput plot a lab run writes: the measured stream's goodput over the run (a
//! PNG a person opens), each move of A marked by a vertical line, each handover gap
//! shaded and labelled with its length.
//!
//! plotters draws into a pixel buffer and png encodes it. Text is set by [`Typeset`],
//! which wraps plotters' bitmap backend: it lays glyphs out with ab_glyph in Ubuntu
//! Light (from `epaint_default_fonts`, egui's built-in fonts), so the plot needs no
//! fontconfig, freetype or system font. (plotters' own ab_glyph text drops each glyph's
//! left side bearing, which spaces letters unevenly: "R TT".)

use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};

use crate::timeline::Timeline;

/// Width and height of the plot in pixels.
pub const PLOT_SIZE: (u32, u32) = (1280, 640);

/// Space around the plot, and for the axes' labels, in pixels.
const MARGIN: u32 = 24;
const X_LABEL_AREA: u32 = 56;
const Y_LABEL_AREA: u32 = 76;
/// What the plot's upper part gives to the margins, the x axis' labels and the caption
/// (some 40 pixels) rather than to the plotting area: near enough, as it only sizes the
/// headroom for the moves' labels.
const PLOT_VERTICAL_FRAME: f64 = (MARGIN + 4 + X_LABEL_AREA) as f64 + 40.0;
/// Height of a legend row, and of a row of move labels (a name and a gap).
const LEGEND_ROW: u32 = 28;
const MOVE_LABEL_ROW: u32 = 46;
/// Labels of moves close together are staggered over this many rows at most.
const MAX_MOVE_LABEL_ROWS: usize = 3;

/// The family plotters is told to use; [`Typeset`] sets every text in one face.
pub(crate) const FONT: &str = "sans-serif";

const GOODPUT: RGBColor = RGBColor(31, 119, 180);
const GAP: RGBColor = RGBColor(214, 39, 40);
const MOVE: RGBColor = RGBColor(40, 40, 40);
const LINK: RGBColor = RGBColor(120, 120, 120);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    #[error("the plot's font did not load")]
    Font,
    #[error("drawing the plot: {0}")]
    Draw(String),
    #[error("encoding the plot as PNG: {0}")]
    Encode(#[from] png::EncodingError),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the plot shows beyond the timeline.
#[derive(Clone, Debug)]
pub struct GoodputPlot<'a> {
    pub timeline: &'a Timeline,
    /// The caption: scenario, family, RTT, rate.
    pub title: String,
    /// The links' rate, drawn as a dashed line for scale when the stream comes near it
    /// (a slow stream, a UDP flow say, would be flattened under it).
    pub link_mbps: Option<f64>,
}

impl GoodputPlot<'_> {
    /// The plot as PNG bytes, [`PLOT_SIZE`] pixels.
    pub fn render(&self) -> Result<Vec<u8>, PlotError> {
        let face = face()?;
        let (w, h) = PLOT_SIZE;
        let mut pixels = vec![0u8; w as usize * h as usize * 3];
        self.draw(face, &mut pixels)
            .map_err(|e| PlotError::Draw(e.to_string()))?;
        encode_png(&pixels, w, h)
    }

    /// Renders the plot and writes it to `path`.
    pub fn write(&self, path: &Path) -> Result<(), PlotError> {
        let png = self.render()?;
        std::fs::write(path, png).map_err(|source| PlotError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    fn draw(
        &self,
        face: &'static FontRef<'static>,
        pixels: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error>> {
        let t = self.timeline;
        let root = Typeset {
            inner: BitMapBackend::with_buffer(pixels, PLOT_SIZE),
            face,
        }
        .into_drawing_area();
        root.fill(&WHITE)?;
        // The legend gets a strip of its own under the axes (over the plot it would hide
        // the stream, which fills the width), in as many rows as it needs.
        let legend = self.legend(face);
        let legend_rows = legend.iter().map(|item| item.row).max().map_or(0, |r| r + 1) as u32;
        let (upper, legend_area) = root.split_vertically(PLOT_SIZE.1 - LEGEND_ROW * legend_rows - 16);
        let (x0, x1) = self.x_range();
        let labels = self.move_labels(face, x0, x1);
        // Room above the stream for the moves' labels: the peak stays below them.
        let label_rows = labels.iter().map(|l| l.row + 1).max().unwrap_or(0);
        let label_px = (label_rows * MOVE_LABEL_ROW + 12) as f64;
        let plot_px = f64::from(upper.dim_in_pixel().1) - PLOT_VERTICAL_FRAME;
        let highest = t.peak_mbps().max(self.link_rate().unwrap_or(0.0)).max(1.0);
        let top = (highest / (1.0 - label_px / plot_px).max(0.5)).max(highest * 1.08);

        // Whole Mbit/s unless the scale is small (a UDP flow of a few Mbit/s).
        let decimals = if top >= 20.0 {
            0
        } else if top >= 2.0 {
            1
        } else {
            2
        };
        let mut chart = ChartBuilder::on(&upper)
            .caption(&self.title, (FONT, 26).into_font().color(&BLACK))
            .margin(MARGIN)
            .margin_bottom(4)
            .x_label_area_size(X_LABEL_AREA)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(x0..x1, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the run started")
            .y_desc(format!("goodput at B, Mbit/s ({:.0} ms bins)", t.bin_s * 1e3))
            .label_style((FONT, 18))
            .axis_desc_style((FONT, 20))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(225, 225, 225))
            .x_labels(14)
            .y_labels(8)
            .y_label_formatter(&|v| format!("{v:.decimals$}"))
            .draw()?;

        // The gaps first, under everything else.
        chart.draw_series(t.gaps().map(|g| {
            Rectangle::new(
                [(g.from_s.max(x0), 0.0), (g.to_s.min(x1), top)],
                GAP.mix(0.22).filled(),
            )
        }))?;
        // Goodput as steps: each bin is flat over its width, as it was measured.
        let steps = (0..t.bytes.len()).flat_map(|i| {
            let (start, v) = (i as f64 * t.bin_s, t.mbps(i));
            [(start, v), (start + t.bin_s, v)]
        });
        chart.draw_series(
            AreaSeries::new(steps, 0.0, GOODPUT.mix(0.18)).border_style(GOODPUT.stroke_width(2)),
        )?;
        if let Some(rate) = self.link_rate() {
            chart.draw_series(DashedLineSeries::new(
                [(x0, rate), (x1, rate)],
                8,
                6,
                LINK.stroke_width(1),
            ))?;
        }
        chart.draw_series(t.moves.iter().map(|m| {
            PathElement::new(
                vec![(m.old_removed_s, 0.0), (m.old_removed_s, top)],
                MOVE.stroke_width(2),
            )
        }))?;
        // Each move's name by its line, and the gap that followed it under that.
        for label in labels {
            let h = if label.flip { HPos::Right } else { HPos::Left };
            let dx = if label.flip { -6 } else { 6 };
            let dy = 6 + (label.row * MOVE_LABEL_ROW) as i32;
            let at = || EmptyElement::at((label.x, top));
            // A backdrop, so that the other moves' lines pass under the text.
            let (left, right) = if label.flip {
                (dx + 3 - label.width, dx + 3)
            } else {
                (dx - 3, dx - 3 + label.width)
            };
            let lines = if label.gap.is_some() { 2 } else { 1 };
            let backdrop = Rectangle::new(
                [(left, dy - 2), (right, dy + 22 * lines + 2)],
                WHITE.mix(0.8).filled(),
            );
            chart.draw_series(std::iter::once(at() + backdrop))?;
            let name = (FONT, 18).into_font().color(&MOVE).pos(Pos::new(h, VPos::Top));
            chart.draw_series(std::iter::once(at() + Text::new(label.name, (dx, dy), name)))?;
            if let Some(gap) = label.gap {
                let style = (FONT, 18).into_font().color(&GAP).pos(Pos::new(h, VPos::Top));
                chart.draw_series(std::iter::once(at() + Text::new(gap, (dx, dy + 22), style)))?;
            }
        }

        for item in legend {
            let y = (LEGEND_ROW * item.row as u32 + LEGEND_ROW / 2 + 4) as i32;
            let x = item.x;
            match item.swatch {
                Swatch::Line(c, w) => {
                    legend_area.draw(&PathElement::new(vec![(x, y), (x + 26, y)], c.stroke_width(w)))?
                }
                Swatch::Bar(c) => legend_area.draw(&PathElement::new(
                    vec![(x + 13, y - 9), (x + 13, y + 9)],
                    c.stroke_width(2),
                ))?,
                Swatch::Fill(c) => legend_area.draw(&Rectangle::new(
                    [(x, y - 8), (x + 26, y + 8)],
                    c.mix(0.35).filled(),
                ))?,
            }
            let font = (FONT, 18)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center));
            legend_area.draw(&Text::new(item.text, (x + 34, y), font))?;
        }
        root.present()?;
        Ok(())
    }

    /// A swatch and a label for each thing drawn, placed left to right from under the
    /// y axis, in rows as wide as the plot.
    fn legend(&self, face: &FontRef<'static>) -> Vec<LegendItem> {
        let t = self.timeline;
        let mut items = vec![(
            Swatch::Line(GOODPUT, 3),
            "goodput (new payload reaching B; TCP retransmissions not counted)".to_owned(),
        )];
        if !t.moves.is_empty() {
            items.push((Swatch::Bar(MOVE), "move of A".into()));
        }
        if t.gaps().next().is_some() {
            items.push((Swatch::Fill(GAP), gap_legend(t)));
        }
        if let Some(rate) = self.link_rate() {
            items.push((Swatch::Line(LINK, 1), format!("link rate {rate:.0} Mbit/s")));
        }
        let (left, right) = ((MARGIN + Y_LABEL_AREA) as i32, (PLOT_SIZE.0 - MARGIN) as i32);
        let (mut x, mut row) = (left, 0);
        let mut placed = Vec::new();
        for (swatch, text) in items {
            let width = 34 + lay_out(face, &text, 18.0).width.ceil() as i32;
            if x > left && x + width > right {
                (x, row) = (left, row + 1);
            }
            placed.push(LegendItem { swatch, text, x, row });
            x += width + 32;
        }
        placed
    }

    /// Where each move's label goes: right of its line, or left of it near the plot's
    /// right edge, and in the first row where it clears the labels before it.
    fn move_labels(&self, face: &FontRef<'static>, x0: f64, x1: f64) -> Vec<MoveLabel> {
        let plot_width = f64::from(PLOT_SIZE.0 - 2 * MARGIN - Y_LABEL_AREA);
        let px = |x: f64| (x - x0) / (x1 - x0) * plot_width;
        let mut rows: Vec<(f64, f64)> = Vec::new(); // each row's extent in pixels
        let mut labels = Vec::new();
        for (i, m) in self.timeline.moves.iter().enumerate() {
            let name = format!("move {}: subnet {} -> {}", i + 1, subnet(&m.from), subnet(&m.to));
            let gap = m.gap.as_ref().map(|g| {
                if g.recovered {
                    format!("gap {:.0} ms", g.length_ms())
                } else {
                    format!("silent {:.0} ms, no recovery", g.length_ms())
                }
            });
            let width = [Some(&name), gap.as_ref()]
                .into_iter()
                .flatten()
                .map(|s| f64::from(lay_out(face, s, 18.0).width))
                .fold(0.0, f64::max)
                + 12.0;
            let x = px(m.old_removed_s);
            let flip = x + width > plot_width;
            let (from, to) = if flip { (x - width, x) } else { (x, x + width) };
            let row = rows
                .iter()
                .position(|(a, b)| to < *a || from > *b)
                .unwrap_or(rows.len());
            let row = if row < MAX_MOVE_LABEL_ROWS {
                row
            } else {
                i % MAX_MOVE_LABEL_ROWS
            };
            match rows.get_mut(row) {
                Some(extent) => *extent = (extent.0.min(from), extent.1.max(to)),
                None => rows.push((from, to)),
            }
            labels.push(MoveLabel {
                x: m.old_removed_s,
                width: width as i32,
                name,
                gap,
                row: row as u32,
                flip,
            });
        }
        labels
    }

    /// The link rate, if the plot shows it: when the stream's peak reaches a quarter of it.
    fn link_rate(&self) -> Option<f64> {
        let peak = self.timeline.peak_mbps();
        self.link_mbps.filter(|rate| peak >= rate / 4.0)
    }

    /// From half a second before the stream (or the first move) to the series' end:
    /// the run's start (roamd starting, sessions forming) is not worth the room.
    fn x_range(&self) -> (f64, f64) {
        let t = self.timeline;
        let first_data = t.bytes.iter().position(|b| *b > 0).map(|i| i as f64 * t.bin_s);
        let first_move = t.moves.iter().map(|m| m.started_s).reduce(f64::min);
        let first = match (first_data, first_move) {
            (Some(d), Some(m)) => d.min(m),
            (a, b) => a.or(b).unwrap_or(0.0),
        };
        let x0 = (first - 0.5).max(0.0);
        let x1 = t.end_s().max(x0 + 1.0);
        (x0, x1)
    }
}

enum Swatch {
    Line(RGBColor, u32),
    Bar(RGBColor),
    Fill(RGBColor),
}

struct LegendItem {
    swatch: Swatch,
    text: String,
    /// Left edge in pixels, and row, in the legend's strip.
    x: i32,
    row: usize,
}

struct MoveLabel {
    /// The move's line, seconds.
    x: f64,
    /// The wider of its two lines of text, and some room, in pixels.
    width: i32,
    name: String,
    gap: Option<String>,
    row: u32,
    /// Left of the line rather than right.
    flip: bool,
}

/// "handover gap 43.1 ms"; over several moves, their range.
fn gap_legend(t: &Timeline) -> String {
    let lengths: Vec<f64> = t.gaps().map(|g| g.length_ms()).collect();
    let unrecovered = t.gaps().filter(|g| !g.recovered).count();
    match (lengths.as_slice(), unrecovered) {
        ([one], 0) => format!("handover gap {one:.1} ms"),
        ([one], _) => format!("stream silent {one:.0} ms, no recovery"),
        _ => {
            let min = lengths.iter().copied().fold(f64::INFINITY, f64::min);
            let max = lengths.iter().copied().fold(0.0, f64::max);
            let mut text = format!("handover gaps ({}): {min:.0} to {max:.0} ms", lengths.len());
            if unrecovered > 0 {
                text.push_str(&format!(", {unrecovered} not recovered"));
            }
            text
        }
    }
}

/// "One" -> "1", as the lab's subnets are numbered in the README.
fn subnet(name: &str) -> &str {
    match name {
        "One" => "1",
        "Two" => "2",
        other => other,
    }
}

/// RGB pixels, `w` by `h`, as PNG bytes.
pub(crate) fn encode_png(pixels: &[u8], w: u32, h: u32) -> Result<Vec<u8>, PlotError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(out)
}

/// The face every text is set in, parsed once per process.
pub(crate) fn face() -> Result<&'static FontRef<'static>, PlotError> {
    static FACE: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FACE.get_or_init(|| FontRef::try_from_slice(epaint_default_fonts::UBUNTU_LIGHT).ok())
        .as_ref()
        .ok_or(PlotError::Font)
}

/// A backend that draws through `inner` and sets text itself: glyph by glyph along
/// the baseline (kerning and side bearings as the font says), anti-aliased by each
/// pixel's coverage, anchored and rotated as plotters asks.
pub(crate) struct Typeset<B> {
    pub(crate) inner: B,
    pub(crate) face: &'static FontRef<'static>,
}

/// Text laid out on one line: each glyph's outline at its place, and the line's box.
struct Line {
    glyphs: Vec<ab_glyph::OutlinedGlyph>,
    width: f32,
    height: f32,
}

/// `text` in `face` at `size` pixels, on one line from x = 0 with the top of the line
/// at y = 0.
fn lay_out(face: &FontRef<'static>, text: &str, size: f64) -> Line {
    let font = face.as_scaled(PxScale::from(size as f32));
    let mut caret = 0.0f32;
    let mut previous = None;
    let mut glyphs = Vec::new();
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = previous {
            caret += font.kern(p, id);
        }
        let glyph = id.with_scale_and_position(font.scale(), point(caret, font.ascent()));
        glyphs.extend(font.outline_glyph(glyph));
        caret += font.h_advance(id);
        previous = Some(id);
    }
    Line {
        glyphs,
        width: caret,
        height: font.ascent() - font.descent(),
    }
}

impl<B: DrawingBackend> DrawingBackend for Typeset<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        (w, h): (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.blit_bitmap(pos, (w, h), src)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<B::ErrorType>> {
        let line = lay_out(self.face, text, style.size());
        let (w, h) = (line.width.ceil() as i32, line.height.ceil() as i32);
        // plotters asks for the box as drawn: a rotated text's is turned too.
        let (x, y) = style.transform().transform(w, h);
        Ok((x.unsigned_abs(), y.unsigned_abs()))
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let line = lay_out(self.face, text, style.size());
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0.0,
            HPos::Center => -line.width / 2.0,
            HPos::Right => -line.width,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0.0,
            VPos::Center => -line.height / 2.0,
            VPos::Bottom => -line.height,
        };
        let transform = style.transform();
        let (w, h) = self.get_size();
        let mut result = Ok(());
        for glyph in &line.glyphs {
            let bounds = glyph.px_bounds();
            let (x0, y0) = (
                (bounds.min.x + dx).round() as i32,
                (bounds.min.y + dy).round() as i32,
            );
            glyph.draw(|x, y, coverage| {
                let (x, y) = transform.transform(x0 + x as i32, y0 + y as i32);
                let (x, y) = (pos.0 + x, pos.1 + y);
                if result.is_ok() && coverage > 0.0 && x >= 0 && y >= 0 && x < w as i32 && y < h as i32 {
                    let shade = BackendColor {
                        alpha: color.alpha * f64::from(coverage.min(1.0)),
                        rgb: color.rgb,
                    };
                    result = self.inner.draw_pixel((x, y), shade);
                }
            });
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{TimelineGap, TimelineMove};

    /// A stream at ~90 Mbit/s from 1 s to 5.5 s, silent after each of `moves` (when,
    /// how long in ms, whether it recovered); an unrecovered one stays silent.
    fn timeline(moves: &[(f64, f64, bool)]) -> Timeline {
        let bin_s = 0.05;
        let silent = |t: f64| {
            moves
                .iter()
                .any(|(at, ms, recovered)| t >= *at && (!*recovered || t < at + ms / 1e3))
        };
        let bytes = (0..120)
            .map(|i| {
                let t = i as f64 * bin_s;
                if !(1.0..5.5).contains(&t) || silent(t) {
                    0
                } else {
                    560_000 + (i % 7) * 3_000
                }
            })
            .collect();
        let moves = moves
            .iter()
            .enumerate()
            .map(|(i, (at, ms, recovered))| TimelineMove {
                started_s: *at,
                old_removed_s: at + 0.001,
                new_added_s: at + 0.002,
                routes_replaced_s: at + 0.004,
                from: if i % 2 == 0 { "One" } else { "Two" }.into(),
                to: if i % 2 == 0 { "Two" } else { "One" }.into(),
                gap: Some(TimelineGap {
                    from_s: at - 0.01,
                    to_s: at + ms / 1e3,
                    recovered: *recovered,
                }),
            })
            .collect();
        Timeline { bin_s, bytes, moves }
    }

    fn decode(png_bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
            .read_info()
            .unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        (info, pixels)
    }

    #[test]
    fn renders_a_png_of_the_plot_size_with_the_gap_shaded() {
        let t = timeline(&[(3.0, 120.0, true)]);
        let plot = GoodputPlot {
            timeline: &t,
            title: "tcp-move: ipv4, RTT 20 ms, 100 Mbit/s".into(),
            link_mbps: Some(100.0),
        };
        let bytes = plot.render().unwrap();
        let (info, pixels) = decode(&bytes);
        assert_eq!((info.width, info.height), PLOT_SIZE);
        assert_eq!(info.color_type, png::ColorType::Rgb);
        // Not blank: the goodput's blue, the gap's pink and text's dark grey are there.
        let has = |want: &dyn Fn(&[u8]) -> bool| pixels.chunks(3).any(want);
        assert!(has(&|p| p == [GOODPUT.0, GOODPUT.1, GOODPUT.2]));
        assert!(has(&|p| p[0] > 230 && p[1] < 215 && p[1] > 150 && p[2] < 215));
        assert!(has(&|p| p.iter().all(|c| *c < 90)));
        if let Ok(dir) = std::env::var("ROAM_PLOT_SAMPLE") {
            plot.write(&Path::new(&dir).join("goodput-sample.png")).unwrap();
        }
    }

    #[test]
    fn renders_several_moves_and_a_stream_that_did_not_recover() {
        let t = timeline(&[(2.0, 80.0, true), (2.5, 150.0, true), (4.0, 1500.0, false)]);
        assert_eq!(
            gap_legend(&t),
            "handover gaps (3): 90 to 1510 ms, 1 not recovered"
        );
        let one = timeline(&[(4.0, 1500.0, false)]);
        assert_eq!(gap_legend(&one), "stream silent 1510 ms, no recovery");
        let plot = GoodputPlot {
            timeline: &t,
            title: "two-moves: IPv6, RTT 20 ms, 100 Mbit/s links, roam on (tun, nudge off)".into(),
            link_mbps: Some(100.0),
        };
        let (info, _) = decode(&plot.render().unwrap());
        assert_eq!((info.width, info.height), PLOT_SIZE);
        if let Ok(dir) = std::env::var("ROAM_PLOT_SAMPLE") {
            plot.write(&Path::new(&dir).join("goodput-sample-moves.png"))
                .unwrap();
        }
    }

    #[test]
    fn the_link_rate_is_drawn_only_for_a_stream_near_it() {
        let fast = timeline(&[]);
        let mut slow = fast.clone();
        slow.bytes.iter_mut().for_each(|b| *b /= 100);
        let plot = |t| GoodputPlot {
            timeline: t,
            title: String::new(),
            link_mbps: Some(100.0),
        };
        assert_eq!(plot(&fast).link_rate(), Some(100.0));
        assert_eq!(plot(&slow).link_rate(), None);
    }

    #[test]
    fn an_empty_timeline_still_plots() {
        let t = Timeline {
            bin_s: 0.05,
            bytes: Vec::new(),
            moves: Vec::new(),
        };
        let plot = GoodputPlot {
            timeline: &t,
            title: "nothing measured".into(),
            link_mbps: None,
        };
        let (info, _) = decode(&plot.render().unwrap());
        assert_eq!((info.width, info.height), PLOT_SIZE);
    }

    #[test]
    fn writing_into_a_missing_directory_is_a_clear_error() {
        let t = timeline(&[]);
        let plot = GoodputPlot {
            timeline: &t,
            title: String::new(),
            link_mbps: None,
        };
        let err = plot
            .write(Path::new("/nonexistent-roam-dir/goodput.png"))
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-roam-dir/goodput.png"),
            "{err}"
        );
    }
}
