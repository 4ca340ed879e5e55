//! Horizontal bar charts, stacked in one PNG: how `roam bench` draws its comparison
//! (one row per system, a bar per figure, whiskers for a spread). Text is set the way
//! the goodput plot sets it ([`crate::plot`]: an embedded font, no system libraries).

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::plot::{FONT, PlotError, Typeset, encode_png, face};

/// Width of the image in pixels.
pub const WIDTH: u32 = 1280;
const ROW_PX: u32 = 30;
const PANEL_FRAME_PX: u32 = 120;
const LABEL_AREA: u32 = 330;

/// Colours of the series, in order.
const SERIES: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// One figure of one row: a bar to `value`, a whisker from `low` to `high`, a dot at
/// `mark` (a maximum, say); `text` instead of a bar when there is no value (why).
#[derive(Clone, Debug)]
pub struct Bar {
    pub series: usize,
    pub value: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub mark: Option<f64>,
    pub text: Option<String>,
}

/// One panel: rows of bars against one logarithmic axis (gaps from milliseconds to
/// seconds, ratios from 0.5 to 20, on one scale each).
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub axis: String,
    /// The series' names, for the legend.
    pub series: Vec<String>,
    /// Each row: its label and its bars (one per series at most).
    pub rows: Vec<(String, Vec<Bar>)>,
    /// A vertical reference line and its label (1.0 = plain TCP, say).
    pub reference: Option<(f64, String)>,
}

impl Panel {
    fn height(&self) -> u32 {
        let bars: usize = self.rows.iter().map(|(_, b)| b.len().max(1)).sum();
        PANEL_FRAME_PX + ROW_PX * bars as u32 + 8 * self.rows.len() as u32
    }

    fn range(&self) -> (f64, f64) {
        let values = self
            .rows
            .iter()
            .flat_map(|(_, bars)| bars.iter())
            .flat_map(|b| [b.value, b.high, b.mark, b.low])
            .flatten()
            .chain(self.reference.as_ref().map(|r| r.0))
            .filter(|v| v.is_finite() && *v > 0.0);
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        if !lo.is_finite() {
            return (1.0, 10.0);
        }
        // Room on the right for the values' labels.
        (lo / 2.0, hi * 4.0)
    }
}

/// The panels, one under the other, as PNG bytes.
pub fn render(panels: &[Panel]) -> Result<Vec<u8>, PlotError> {
    let face = face()?;
    let height: u32 = panels.iter().map(Panel::height).sum::<u32>().max(100);
    let mut pixels = vec![0u8; WIDTH as usize * height as usize * 3];
    draw(panels, face, &mut pixels, height).map_err(|e| PlotError::Draw(e.to_string()))?;
    encode_png(&pixels, WIDTH, height)
}

fn draw(
    panels: &[Panel],
    face: &'static ab_glyph::FontRef<'static>,
    pixels: &mut [u8],
    height: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = Typeset {
        inner: BitMapBackend::with_buffer(pixels, (WIDTH, height)),
        face,
    }
    .into_drawing_area();
    root.fill(&WHITE)?;
    let mut rest = root.clone();
    for panel in panels {
        let (area, below) = rest.split_vertically(panel.height());
        rest = below;
        draw_panel(panel, &area)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel<DB>(
    panel: &Panel,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    // Each bar one unit of y, and 0.4 of one between rows.
    let mut y = 0.0;
    let mut positions: Vec<Vec<f64>> = Vec::new();
    for (r, (_, bars)) in panel.rows.iter().enumerate() {
        if r > 0 {
            y += 0.4;
        }
        let mut mine = Vec::new();
        for _ in 0..bars.len().max(1) {
            mine.push(y);
            y += 1.0;
        }
        positions.push(mine);
    }
    let row_centre: Vec<f64> = positions
        .iter()
        .map(|ys| (ys[0] + ys[ys.len() - 1]) / 2.0 + 0.5)
        .collect();
    let total = y.max(1.0);
    let (lo, hi) = panel.range();
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 22).into_font().color(&BLACK))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(LABEL_AREA)
        .build_cartesian_2d((lo..hi).log_scale(), total..0.0)?;
    chart
        .configure_mesh()
        .x_desc(panel.axis.as_str())
        .disable_y_mesh()
        .disable_y_axis()
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .x_label_formatter(&|v| short(*v))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    let x_min = lo;
    for ((_, bars), mine) in panel.rows.iter().zip(&positions) {
        for (bar, top) in bars.iter().zip(mine) {
            let colour = SERIES[bar.series % SERIES.len()];
            let (y0, y1) = (top + 0.12, top + 0.88);
            let mid = top + 0.5;
            match bar.value {
                Some(v) => {
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(x_min, y0), (v, y1)],
                        colour.mix(0.75).filled(),
                    )))?;
                    if let (Some(lo), Some(hi)) = (bar.low, bar.high) {
                        chart.draw_series(std::iter::once(PathElement::new(
                            vec![(lo, mid), (hi, mid)],
                            BLACK.stroke_width(2),
                        )))?;
                        for end in [lo, hi] {
                            chart.draw_series(std::iter::once(PathElement::new(
                                vec![(end, y0 + 0.15), (end, y1 - 0.15)],
                                BLACK.stroke_width(2),
                            )))?;
                        }
                    }
                    if let Some(m) = bar.mark {
                        chart.draw_series(std::iter::once(Circle::new((m, mid), 4, BLACK.filled())))?;
                    }
                    let label = bar.text.clone().unwrap_or_else(|| short(v));
                    let at = bar.mark.or(bar.high).unwrap_or(v).max(v);
                    let style = (FONT, 15)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Left, VPos::Center));
                    chart.draw_series(std::iter::once(
                        EmptyElement::at((at, mid)) + Text::new(label, (10, 0), style),
                    ))?;
                }
                None => {
                    chart.draw_series(std::iter::once(Text::new(
                        bar.text.clone().unwrap_or_else(|| "no value".into()),
                        (x_min, mid),
                        (FONT, 15)
                            .into_font()
                            .color(&colour)
                            .pos(Pos::new(HPos::Left, VPos::Center)),
                    )))?;
                }
            }
        }
    }
    if let Some((v, label)) = &panel.reference {
        chart.draw_series(DashedLineSeries::new(
            [(*v, 0.0), (*v, total)],
            6,
            5,
            RGBColor(90, 90, 90).stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            label.clone(),
            (*v, 0.0),
            (FONT, 14)
                .into_font()
                .color(&RGBColor(90, 90, 90))
                .pos(Pos::new(HPos::Left, VPos::Top)),
        )))?;
    }
    // Row labels, right-aligned against the plotting area.
    let label_style = (FONT, 17)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for ((label, _), centre) in panel.rows.iter().zip(&row_centre) {
        let (px, py) = chart.backend_coord(&(x_min, *centre));
        area.draw(&Text::new(
            label.clone(),
            (px - 10 - area.get_base_pixel().0, py - area.get_base_pixel().1),
            label_style.clone(),
        ))?;
    }
    // The legend, at the top right, when there is more than one series.
    if panel.series.len() > 1 {
        let (w, _) = area.dim_in_pixel();
        let mut x = w as i32 - 16;
        for (i, name) in panel.series.iter().enumerate().rev() {
            let width = 30 + 9 * name.chars().count() as i32;
            x -= width;
            let colour = SERIES[i % SERIES.len()];
            area.draw(&Rectangle::new(
                [(x, 10), (x + 18, 24)],
                colour.mix(0.75).filled(),
            ))?;
            area.draw(&Text::new(
                name.clone(),
                (x + 24, 17),
                (FONT, 15)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
    }
    Ok(())
}

/// A value as a short label: three significant digits.
fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel() -> Panel {
        Panel {
            title: "handover gap".into(),
            axis: "ms".into(),
            series: vec!["bulk".into(), "req/resp".into()],
            rows: vec![
                (
                    "roam".into(),
                    vec![
                        Bar {
                            series: 0,
                            value: Some(40.0),
                            low: Some(30.0),
                            high: Some(60.0),
                            mark: Some(80.0),
                            text: None,
                        },
                        Bar {
                            series: 1,
                            value: Some(25.0),
                            low: None,
                            high: None,
                            mark: None,
                            text: None,
                        },
                    ],
                ),
                (
                    "plain TCP".into(),
                    vec![Bar {
                        series: 0,
                        value: None,
                        low: None,
                        high: None,
                        mark: None,
                        text: Some("died at every move".into()),
                    }],
                ),
            ],
            reference: Some((40.0, "2 RTT".into())),
        }
    }

    #[test]
    fn renders_a_png_of_the_panels_height() {
        let png = render(&[panel(), panel()]).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // The IHDR chunk: width then height, big-endian, after the signature and the
        // chunk's length and type.
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!(w, WIDTH);
        assert_eq!(h, panel().height() * 2);
    }

    #[test]
    fn an_empty_panel_still_renders() {
        let empty = Panel {
            rows: Vec::new(),
            ..panel()
        };
        assert!(render(&[empty]).is_ok());
    }
}
