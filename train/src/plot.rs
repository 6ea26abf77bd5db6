//! Training curves as PNG line charts, drawn with [`rlip_data::draw`] (no plotting crate and no
//! font files): charts stacked vertically, each with axes, 4–6 "nice" ticks (1/2/5×10^k), a
//! legend and an optional log y axis; plus [`charts_from_metrics`], which turns the trainer's
//! `metrics.jsonl` into the usual three charts (loss, loss terms, evaluation).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rlip_data::draw::{self, Rgb};
use rlip_data::preprocess::RgbImage;
use serde_json::{Map, Value};

/// One named line of a chart: `(x, y)` points joined in the given order. Non-finite points (and
/// non-positive `y` on a log axis) are skipped; a lone point is drawn as a square marker, and
/// lines of up to 60 points get small markers at their points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` data.
    pub points: Vec<(f64, f64)>,
}

/// One line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Drawn centred above the plot.
    pub title: String,
    /// Drawn centred below the x axis.
    pub x_label: String,
    /// Drawn above the y axis (with "(log scale)" appended when `log_y`).
    pub y_label: String,
    /// Lines, coloured in order from [`COLOURS`].
    pub series: Vec<Series>,
    /// Logarithmic y axis (for losses).
    pub log_y: bool,
}

/// Why a plot could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Writing the PNG failed.
    #[error("writing plot {}: {source}", path.display())]
    Io {
        /// The file asked for.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A line of a metrics file is not a valid record.
    #[error("metrics line {line}: {message}")]
    Metrics {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// Series colours, in order (matplotlib's tab10 with its grey replaced by navy); they repeat
/// after ten series.
pub const COLOURS: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [0, 0, 128],
    [188, 189, 34],
    [23, 190, 207],
];

/// The largest width and per-chart height [`render`] draws; larger requests are clamped.
pub const MAX_SIDE: usize = 8192;

const BG: Rgb = [255, 255, 255];
const FG: Rgb = [0, 0, 0];
const GRID: Rgb = [228, 228, 228];
const PAD: i64 = 6;
/// Height of a scale-1 text line including the text box margins of [`draw::draw_text`].
const LINE: i64 = 12;
const LEGEND_ROW: i64 = 14;

/// Renders `charts` stacked vertically, each `width × height_per_chart` pixels (both clamped to
/// `1..=MAX_SIDE`), on a white background. A chart whose series hold no drawable point says
/// "no data"; with no charts at all the image is one "no data" panel. Sizes too small for a
/// plot area draw only what fits.
pub fn render(charts: &[Chart], width: usize, height_per_chart: usize) -> RgbImage {
    let (w, h) = (
        width.clamp(1, MAX_SIDE),
        height_per_chart.clamp(1, MAX_SIDE),
    );
    let n = charts.len().max(1);
    let mut img = RgbImage {
        width: w,
        height: h * n,
        data: vec![255; w * h * n * 3],
    };
    if charts.is_empty() {
        let msg = "no data";
        let x = (w as i64 - draw::text_width(msg, 1)) / 2;
        draw::draw_text(&mut img, x, h as i64 / 2 - 6, msg, 1, FG, BG);
    }
    for (i, chart) in charts.iter().enumerate() {
        let top = (i * h) as i64;
        if i > 0 {
            draw::fill_rect(&mut img, 0, top, w as i64, top + 1, GRID);
        }
        draw_chart(&mut img, chart, top, w as i64, h as i64);
    }
    img
}

/// [`render`]s `charts` and writes them as a PNG at `path`, atomically: the bytes go to a
/// temporary file in the same folder, which is then renamed over `path`.
pub fn write_png(
    path: impl AsRef<Path>,
    charts: &[Chart],
    width: usize,
    height_per_chart: usize,
) -> Result<(), PlotError> {
    let path = path.as_ref();
    let io = |source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = dir.unwrap_or(Path::new(".")).join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let bytes = draw::encode_png(&render(charts, width, height_per_chart));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Reads a training metrics file (JSON lines) into charts:
///
/// 1. total `loss` vs `step`, with a trailing moving average once there are 4 or more steps;
/// 2. the main loss `terms` (names without an auxiliary-layer suffix such as `_0`, `_1`) vs step
///    on a log axis, if any line has terms;
/// 3. evaluation metrics vs step, if any line is an evaluation record.
///
/// A training line is an object with numeric `step` and `loss` (`null`, which is how JSON
/// writers spell NaN, counts as a skipped point), optional `epoch` and optional `terms` (an
/// object of numbers or `null`); other fields are ignored. An evaluation line is
/// `{"eval": {"step": .., "epoch": .., "metrics": {"<name>": value, ..}}}`; non-numeric metric
/// entries (breakdowns) are ignored. Blank lines are skipped; anything else is an error that
/// names the 1-based line.
pub fn charts_from_metrics(jsonl: &str) -> Result<Vec<Chart>, PlotError> {
    let mut loss = Vec::new();
    let mut terms: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut evals: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut epochs: Option<(f64, f64)> = None;
    for (i, line) in jsonl.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| PlotError::Metrics {
            line: i + 1,
            message,
        };
        let value: Value =
            serde_json::from_str(line).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| err("not a JSON object".into()))?;
        if let Some(ev) = obj.get("eval") {
            let ev = ev
                .as_object()
                .ok_or_else(|| err("`eval` is not an object".into()))?;
            let step = finite_field(ev, "eval.step").map_err(err)?;
            let metrics = ev
                .get("metrics")
                .and_then(Value::as_object)
                .ok_or_else(|| err("`eval.metrics` is missing or not an object".into()))?;
            for (name, v) in metrics {
                if let Some(y) = number(v) {
                    evals.entry(name.clone()).or_default().push((step, y));
                }
            }
            continue;
        }
        let step = finite_field(obj, "step").map_err(err)?;
        let l = obj
            .get("loss")
            .and_then(number)
            .ok_or_else(|| err("`loss` is missing or not a number".into()))?;
        loss.push((step, l));
        if let Some(e) = obj.get("epoch").filter(|e| !e.is_null()) {
            let e = e
                .as_f64()
                .ok_or_else(|| err("`epoch` is not a number".into()))?;
            epochs = Some(epochs.map_or((e, e), |(a, b)| (a.min(e), b.max(e))));
        }
        if let Some(t) = obj.get("terms") {
            let t = t
                .as_object()
                .ok_or_else(|| err("`terms` is not an object".into()))?;
            for (name, v) in t.iter().filter(|(name, _)| !is_aux(name)) {
                let y = number(v).ok_or_else(|| err(format!("term `{name}` is not a number")))?;
                terms.entry(name.clone()).or_default().push((step, y));
            }
        }
    }
    let mut title = "training loss".to_string();
    if let (Some(&(first, _)), Some(&(last, _))) = (loss.first(), loss.last()) {
        title += &format!(" (steps {first}-{last}");
        if let Some((a, b)) = epochs {
            title += &format!(", epochs {a}-{b}");
        }
        title += ")";
    }
    let mut series = vec![];
    let window = (loss.len() / 20).clamp(2, 500);
    if loss.len() >= 4 {
        series.push(Series {
            name: format!("moving avg ({window} steps)"),
            points: moving_average(&loss, window),
        });
    }
    series.insert(
        0,
        Series {
            name: "loss".into(),
            points: loss,
        },
    );
    let to_series = |m: BTreeMap<String, Vec<(f64, f64)>>| {
        m.into_iter()
            .map(|(name, points)| Series { name, points })
            .collect()
    };
    let mut charts = vec![Chart {
        title,
        x_label: "step".into(),
        y_label: "loss".into(),
        series,
        log_y: false,
    }];
    if !terms.is_empty() {
        charts.push(Chart {
            title: "loss terms (last decoder layer)".into(),
            x_label: "step".into(),
            y_label: "term".into(),
            series: to_series(terms),
            log_y: true,
        });
    }
    if !evals.is_empty() {
        charts.push(Chart {
            title: "evaluation".into(),
            x_label: "step".into(),
            y_label: "metric".into(),
            series: to_series(evals),
            log_y: false,
        });
    }
    Ok(charts)
}

/// A JSON number as `f64`; `null` (a NaN written by serde_json) as NaN; anything else `None`.
fn number(v: &Value) -> Option<f64> {
    if v.is_null() {
        Some(f64::NAN)
    } else {
        v.as_f64()
    }
}

/// A required finite number field (`path` names it in the message; its last part is the key).
fn finite_field(obj: &Map<String, Value>, path: &str) -> Result<f64, String> {
    let key = path.rsplit('.').next().unwrap_or(path);
    obj.get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("`{path}` is missing or not a number"))
}

/// Whether a loss term name ends in an auxiliary decoder layer suffix (`_0`, `_1`, …).
fn is_aux(name: &str) -> bool {
    name.rsplit_once('_')
        .is_some_and(|(_, d)| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Trailing mean over the last `window` points of the finite `y` values (NaN where none).
fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let (mut sum, mut count) = (0.0, 0usize);
    let fin = |y: f64| if y.is_finite() { (y, 1) } else { (0.0, 0) };
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            let (v, c) = fin(y);
            (sum, count) = (sum + v, count + c);
            if i >= window {
                let (v, c) = fin(points[i - window].1);
                (sum, count) = (sum - v, count - c);
            }
            (
                x,
                if count > 0 {
                    sum / count as f64
                } else {
                    f64::NAN
                },
            )
        })
        .collect()
}

/// An axis: its range, scale and labelled ticks.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    fn t(&self, v: f64) -> f64 {
        if self.log { v.log10() } else { v }
    }

    /// Position of `v` along the axis, 0 at `lo` and 1 at `hi`.
    fn frac(&self, v: f64) -> f64 {
        let (a, b) = (self.t(self.lo), self.t(self.hi));
        (self.t(v) - a) / (b - a)
    }

    /// The axis for the given values: finite ones (and positive ones on a log axis), padded by
    /// 2% (a lone value by 10%, or ±1 at zero; on a log axis by 0.1 decade), with ticks chosen by [`choose_ticks`].
    fn fit(values: impl Iterator<Item = f64>, log: bool) -> Option<Axis> {
        let t = |v: f64| if log { v.log10() } else { v };
        let (lo, hi) = values
            .filter(|v| v.is_finite() && (!log || *v > 0.0))
            .map(t)
            .fold(None, |r: Option<(f64, f64)>, v| {
                Some(r.map_or((v, v), |(a, b)| (a.min(v), b.max(v))))
            })?;
        let span = hi - lo;
        let tiny = if log {
            1e-6
        } else {
            1e-9 * lo.abs().max(hi.abs())
        };
        let (lo, hi) = if span > tiny {
            (lo - 0.02 * span, hi + 0.02 * span)
        } else if log {
            (lo - 0.1, hi + 0.1)
        } else if lo == 0.0 {
            (-1.0, 1.0)
        } else {
            (lo - 0.1 * lo.abs(), hi + 0.1 * hi.abs())
        };
        let inv = |v: f64| if log { 10f64.powf(v) } else { v };
        Some(choose_ticks(inv(lo), inv(hi), log))
    }
}

/// How [`choose_ticks`] rates ticks inside the data range against a widened range, whose
/// rating is the fraction of it that the data spans.
const INNER_QUALITY: f64 = 0.7;

/// A candidate tick set: the axis range it implies, and whether that range was widened to the
/// outer ticks (rather than keeping the data range with the ticks inside it).
struct Candidate {
    axis: Axis,
    widened: bool,
}

/// Picks 4–6 ticks for `[lo, hi]` (both positive on a log axis). Linear axes try every step
/// `m·10^k` (m ∈ {1, 2, 5}), either widening the range to the outer ticks or keeping it with the
/// ticks inside; one of these always gives 4–6 ticks. Log axes also try powers of ten (every
/// 1, 2, 5, … decades) and the 1-2-5 sequence. Among those with 4–6 ticks, a widened range that
/// the data still covers well (in plotted space) beats ticks inside the data range.
fn choose_ticks(lo: f64, hi: f64, log: bool) -> Axis {
    let mut cands = vec![];
    if log {
        let (a, b) = (lo.log10(), hi.log10());
        for e in [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0] {
            let ticks = |i0: f64, i1: f64| multiples(i0, i1, e, |v| 10f64.powf(v), |v| v);
            let (i0, i1) = ((a / e).floor(), (b / e).ceil());
            cands.push(Candidate::widened(lo, hi, ticks(i0, i1), true));
            cands.push(Candidate::inner(
                lo,
                hi,
                ticks((a / e).ceil(), (b / e).floor()),
                true,
            ));
        }
        let seq: Vec<f64> = (a.floor() as i64 - 1..=b.ceil() as i64 + 1)
            .flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(k as i32)))
            .collect();
        let below = seq.iter().rposition(|&v| v <= lo);
        let above = seq.iter().position(|&v| v >= hi);
        if let (Some(i0), Some(i1)) = (below, above) {
            cands.push(Candidate::widened(lo, hi, label_each(&seq[i0..=i1]), true));
        }
        let inside: Vec<f64> = seq.into_iter().filter(|v| (lo..=hi).contains(v)).collect();
        cands.push(Candidate::inner(lo, hi, label_each(&inside), true));
    }
    let span = hi - lo;
    if span.is_finite() && span > 0.0 {
        let e = span.log10().floor() as i32;
        for k in e - 2..=e + 1 {
            for m in [1.0, 2.0, 5.0] {
                let s = m * 10f64.powi(k);
                if !(s.is_finite() && s > 0.0) || span / s > 12.0 {
                    continue;
                }
                let ticks = |i0: f64, i1: f64| multiples(i0, i1, 1.0, |i| i * s, |_| s);
                let wide = ticks((lo / s).floor(), (hi / s).ceil());
                if !log || wide.first().is_some_and(|t| t.0 > 0.0) {
                    cands.push(Candidate::widened(lo, hi, wide, log));
                }
                let inner = ticks((lo / s).ceil(), (hi / s).floor());
                cands.push(Candidate::inner(lo, hi, inner, log));
            }
        }
    }
    // sets of 4–6 ticks first, ranked by how much of the axis the data fills (ticks inside the
    // data range count as INNER_QUALITY); the others only by how near they come to 5 ticks
    let key = |c: &Candidate| {
        let (a, n) = (&c.axis, c.axis.ticks.len());
        if (4..=6).contains(&n) {
            let cover = (a.t(hi) - a.t(lo)) / (a.t(a.hi) - a.t(a.lo));
            (1, if c.widened { cover } else { INNER_QUALITY })
        } else {
            (0, -(n as f64 - 5.0).abs())
        }
    };
    let mut best: Option<(&Candidate, (i32, f64))> = None;
    for c in &cands {
        let k = key(c);
        if best.is_none_or(|(_, b)| k.0 > b.0 || (k.0 == b.0 && k.1 > b.1)) {
            best = Some((c, k));
        }
    }
    best.map_or(
        Axis {
            lo,
            hi,
            log,
            ticks: vec![],
        },
        |(c, _)| c.axis.clone(),
    )
}

impl Candidate {
    /// The range from the first to the last tick (stretched to `[lo, hi]` should rounding
    /// leave a tick a hair inside the data).
    fn widened(lo: f64, hi: f64, ticks: Vec<(f64, String)>, log: bool) -> Candidate {
        let ends = ticks.first().zip(ticks.last());
        let (lo, hi) = ends.map_or((f64::NAN, f64::NAN), |(a, b)| (a.0.min(lo), b.0.max(hi)));
        let axis = Axis { lo, hi, log, ticks };
        Candidate {
            widened: true,
            axis,
        }
    }

    fn inner(lo: f64, hi: f64, ticks: Vec<(f64, String)>, log: bool) -> Candidate {
        let ticks = ticks.into_iter().filter(|t| !log || t.0 > 0.0).collect();
        let axis = Axis { lo, hi, log, ticks };
        Candidate {
            widened: false,
            axis,
        }
    }
}

/// Ticks `value(i·e)` for integer `i` in `[i0, i1]`, each labelled to the precision `step(v)`
/// (empty for more than 20 ticks).
fn multiples(
    i0: f64,
    i1: f64,
    e: f64,
    value: impl Fn(f64) -> f64,
    step: impl Fn(f64) -> f64,
) -> Vec<(f64, String)> {
    if !(i0.is_finite() && i1.is_finite()) || i1 - i0 > 20.0 {
        return vec![];
    }
    (i0 as i64..=i1 as i64)
        .map(|i| value(i as f64 * e))
        .map(|v| (v, fmt_tick(v, step(v))))
        .collect()
}

/// Ticks at `values`, each labelled to its own leading digit.
fn label_each(values: &[f64]) -> Vec<(f64, String)> {
    values.iter().map(|&v| (v, fmt_tick(v, v))).collect()
}

/// Formats a tick value to the precision of `step`: plain decimals for magnitudes in
/// `[1e-3, 1e5)`, otherwise scientific (`1e-4`, `2.5e6`).
fn fmt_tick(v: f64, step: f64) -> String {
    if v == 0.0 || v.abs() < step.abs() * 1e-9 {
        return "0".into();
    }
    let mag = v.abs().log10().floor() as i32;
    let prec = step.abs().log10().floor() as i32;
    if (-3..5).contains(&mag) {
        return format!("{:.*}", (-prec).clamp(0, 15) as usize, v);
    }
    let s = format!("{:.*e}", (mag - prec).clamp(0, 15) as usize, v);
    match s.split_once('e') {
        Some((m, e)) if m.contains('.') => {
            format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.'))
        }
        _ => s,
    }
}

/// `text`, cut to at most `max_px` pixels wide at scale 1 (ending in ".." when cut).
fn fit_text(text: &str, max_px: i64) -> String {
    let max = (max_px / 8).max(0) as usize;
    if text.chars().count() <= max {
        return text.into();
    }
    match max {
        0..=2 => text.chars().take(max).collect(),
        _ => text.chars().take(max - 2).chain("..".chars()).collect(),
    }
}

/// Where the parts of one chart go, in chart-local pixels.
#[derive(Debug, Clone, PartialEq)]
struct Layout {
    x: Option<Axis>,
    y: Option<Axis>,
    title_scale: i64,
    /// The data area `[x0, x1) × [y0, y1)`; the axes frame it from outside. `None` when the
    /// chart is too small for one.
    plot: Option<[i64; 4]>,
    /// Left edge of the legend column.
    legend_x: i64,
}

fn layout(c: &Chart, w: i64, h: i64) -> Layout {
    let points = || {
        c.series
            .iter()
            .flat_map(|s| &s.points)
            .filter(|p| drawable(p, c.log_y))
    };
    let x = Axis::fit(points().map(|p| p.0), false);
    let y = Axis::fit(points().map(|p| p.1), c.log_y);
    let title_scale = if h >= 120 && draw::text_width(&c.title, 2) + 2 * PAD <= w {
        2
    } else {
        1
    };
    let label_w = |a: &Option<Axis>| {
        a.iter()
            .flat_map(|a| &a.ticks)
            .map(|t| draw::text_width(&t.1, 1))
            .max()
            .unwrap_or(0)
    };
    let legend_w = c
        .series
        .iter()
        .map(|s| draw::text_width(&legend_label(s, c.log_y), 1) + 24 + 2 * PAD)
        .max()
        .unwrap_or(0)
        .min(w / 3);
    let x0 = PAD + label_w(&y) + 4 + 6;
    let x1 = w - PAD - legend_w;
    let y0 = 3 + 12 * title_scale + LINE + 12;
    let y1 = h - PAD - 2 * LINE - 6;
    let plot = (x1 - x0 >= 16 && y1 - y0 >= 16).then_some([x0, y0, x1, y1]);
    Layout {
        x,
        y,
        title_scale,
        plot,
        legend_x: x1 + PAD + 2,
    }
}

/// Whether a point can be plotted: finite, with a positive `y` on a log axis.
fn drawable(&(x, y): &(f64, f64), log_y: bool) -> bool {
    x.is_finite() && y.is_finite() && (!log_y || y > 0.0)
}

/// A series' legend text: its name, marked when nothing of it can be drawn.
fn legend_label(s: &Series, log_y: bool) -> String {
    if s.points.iter().any(|p| drawable(p, log_y)) {
        s.name.clone()
    } else {
        format!("{} (no data)", s.name)
    }
}

fn draw_chart(img: &mut RgbImage, c: &Chart, top: i64, w: i64, h: i64) {
    let l = layout(c, w, h);
    let ts = l.title_scale;
    let title = fit_text(&c.title, (w - 2 * PAD) / ts);
    let tx = (w - draw::text_width(&title, ts)) / 2 - 2 * ts;
    draw::draw_text(img, tx, top + 3, &title, ts, FG, BG);
    let Some([x0, y0, x1, y1]) = l.plot else {
        return;
    };
    let (y0, y1) = (y0 + top, y1 + top);
    let y_label = if c.log_y {
        format!("{} (log scale)", c.y_label)
    } else {
        c.y_label.clone()
    };
    draw::draw_text(
        img,
        PAD,
        y0 - LINE - 10,
        &fit_text(&y_label, w - 2 * PAD),
        1,
        FG,
        BG,
    );
    let x_label = fit_text(&c.x_label, x1 - x0);
    let xl = (x0 + x1 - draw::text_width(&x_label, 1)) / 2 - 2;
    draw::draw_text(img, xl, y1 + LINE + 6, &x_label, 1, FG, BG);
    draw_legend(img, c, l.legend_x, y0, y1);
    let frame = |img: &mut RgbImage| {
        draw::draw_box(img, [x0 - 1, y0 - 1, x1, y1].map(|v| v as f32), FG, 1);
    };
    let (Some(xa), Some(ya)) = (&l.x, &l.y) else {
        frame(img);
        let msg = "no data";
        let mx = (x0 + x1 - draw::text_width(msg, 1)) / 2;
        draw::draw_text(img, mx, (y0 + y1) / 2 - 6, msg, 1, FG, BG);
        return;
    };
    let px =
        |v: f64| (x0 as f64 + xa.frac(v) * (x1 - 1 - x0) as f64).clamp(x0 as f64, (x1 - 1) as f64);
    let py = |v: f64| {
        (y1 as f64 - 1.0 - ya.frac(v) * (y1 - 1 - y0) as f64).clamp(y0 as f64, (y1 - 1) as f64)
    };
    let xs: Vec<i64> = xa.ticks.iter().map(|t| px(t.0).round() as i64).collect();
    let ys: Vec<i64> = ya.ticks.iter().map(|t| py(t.0).round() as i64).collect();
    for &x in &xs {
        draw::fill_rect(img, x, y0, x + 1, y1, GRID);
    }
    for &y in &ys {
        draw::fill_rect(img, x0, y, x1, y + 1, GRID);
    }
    for (s, colour) in c.series.iter().zip(COLOURS.iter().cycle()) {
        let pts: Vec<[f32; 2]> = s
            .points
            .iter()
            .filter(|p| drawable(p, c.log_y))
            .map(|p| [px(p.0) as f32, py(p.1) as f32])
            .filter(|p| p.iter().all(|v| v.is_finite()))
            .collect();
        // markers: a big one for a lone point, small ones on sparse lines (evaluations)
        let r = match pts.len() {
            1 => 3,
            2..=60 => 2,
            _ => 0,
        };
        for p in pts.iter().filter(|_| r > 0) {
            let [x, y] = p.map(|v| v.round() as i64);
            draw::fill_rect(img, x - r, y - r, x + r + 1, y + r + 1, *colour);
        }
        let thickness = if pts.len() as i64 > (x1 - x0) / 2 {
            1
        } else {
            2
        };
        for pair in pts.windows(2) {
            draw::draw_line(img, pair[0], pair[1], *colour, thickness);
        }
    }
    // clear what markers drew past the data area, then the frame, ticks and their labels
    // (thinned so that labels do not overlap)
    for [a, b, c, d] in [
        [x0 - 4, y0 - 4, x1 + 4, y0 - 1],
        [x0 - 4, y1 + 1, x1 + 4, y1 + 4],
        [x0 - 4, y0 - 1, x0 - 1, y1 + 1],
        [x1 + 1, y0 - 1, x1 + 4, y1 + 1],
    ] {
        draw::fill_rect(img, a, b, c, d, BG);
    }
    frame(img);
    let stride = |n: usize, room: i64, need: i64| {
        let gap = (room / (n as i64 - 1).max(1)).max(1);
        ((need + gap - 1) / gap).max(1) as usize
    };
    let widest = |a: &Axis| a.ticks.iter().map(|t| draw::text_width(&t.1, 1)).max();
    let every = stride(xs.len(), x1 - x0, widest(xa).unwrap_or(0) + 8);
    for (i, (&x, (_, label))) in xs.iter().zip(&xa.ticks).enumerate() {
        draw::fill_rect(img, x, y1, x + 1, y1 + 5, FG);
        if i % every == 0 {
            let lx = x - draw::text_width(label, 1) / 2 - 2;
            draw::draw_text(img, lx, y1 + 5, label, 1, FG, BG);
        }
    }
    let every = stride(ys.len(), y1 - y0, LINE);
    for (i, (&y, (_, label))) in ys.iter().zip(&ya.ticks).enumerate() {
        draw::fill_rect(img, x0 - 6, y, x0, y + 1, FG);
        if i % every == 0 {
            let lx = x0 - 6 - draw::text_width(label, 1) - 4;
            draw::draw_text(img, lx, y - LINE / 2, label, 1, FG, BG);
        }
    }
}

fn draw_legend(img: &mut RgbImage, c: &Chart, x: i64, y0: i64, y1: i64) {
    let rows = ((y1 - y0) / LEGEND_ROW).max(1) as usize;
    let room = img.width as i64 - x - 24 - PAD;
    for (i, (s, colour)) in c.series.iter().zip(COLOURS.iter().cycle()).enumerate() {
        let y = y0 + i as i64 * LEGEND_ROW;
        if i + 1 == rows && c.series.len() > rows {
            let more = format!("+{} more", c.series.len() - i);
            draw::draw_text(img, x, y, &fit_text(&more, room + 24), 1, FG, BG);
            break;
        }
        draw::fill_rect(img, x, y + 4, x + 18, y + 8, *colour);
        let label = fit_text(&legend_label(s, c.log_y), room);
        draw::draw_text(img, x + 22, y, &label, 1, FG, BG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn px(img: &RgbImage, x: i64, y: i64) -> Rgb {
        let i = (y as usize * img.width + x as usize) * 3;
        [img.data[i], img.data[i + 1], img.data[i + 2]]
    }

    /// Pixels of the rectangle `[x0, x1) × [y0, y1)`.
    fn region(img: &RgbImage, [x0, y0, x1, y1]: [i64; 4]) -> Vec<Rgb> {
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .map(|(x, y)| px(img, x, y))
            .collect()
    }

    fn chart(series: Vec<Series>, log_y: bool) -> Chart {
        Chart {
            title: "t".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series,
            log_y,
        }
    }

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series {
            name: name.into(),
            points: points.to_vec(),
        }
    }

    fn tick_values(a: &Axis) -> Vec<f64> {
        a.ticks.iter().map(|t| t.0).collect()
    }

    fn labels(a: &Axis) -> Vec<&str> {
        a.ticks.iter().map(|t| t.1.as_str()).collect()
    }

    #[test]
    fn linear_ticks_are_nice_and_cover_the_data() {
        let a = choose_ticks(0.0, 100.0, false);
        assert_eq!(tick_values(&a), [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(labels(&a), ["0", "20", "40", "60", "80", "100"]);
        // widening would waste much of the axis here: ticks inside the data range instead
        let a = choose_ticks(0.13, 0.61, false);
        assert_eq!(labels(&a), ["0.2", "0.3", "0.4", "0.5", "0.6"]);
        assert_eq!((a.lo, a.hi), (0.13, 0.61));
        let a = choose_ticks(0.1, 0.78, false);
        assert_eq!(labels(&a), ["0", "0.2", "0.4", "0.6", "0.8"]);
        // the case where widening to the outer ticks gives 3 or 7: ticks inside the range
        let a = choose_ticks(5.5, 14.5, false);
        assert_eq!(labels(&a), ["6", "8", "10", "12", "14"]);
        assert_eq!((a.lo, a.hi), (5.5, 14.5));
        let a = choose_ticks(-3e-5, 2.2e-4, false);
        assert!(
            labels(&a).iter().all(|l| l.contains('e') || *l == "0"),
            "{a:?}"
        );
        assert_eq!(fmt_tick(1.5e6, 5e5), "1.5e6");
        assert_eq!(fmt_tick(0.30000000000000004, 0.1), "0.3");
        // every range gets 4–6 ticks at m·10^k steps, and the axis covers the range
        let mut r = 0x2545f4914f6cdd1du64;
        for _ in 0..5000 {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            let u = (r % 1_000_000) as f64 / 1e6;
            let lo = (u - 0.5) * 10f64.powi(((r >> 20) % 9) as i32 - 4);
            let hi = lo
                + (0.001 + (r >> 40) as f64 / (1u64 << 24) as f64)
                    * 10f64.powi(((r >> 30) % 7) as i32 - 3);
            let a = choose_ticks(lo, hi, false);
            let n = a.ticks.len();
            assert!((4..=6).contains(&n), "{lo} {hi}: {a:?}");
            assert!(a.lo <= lo && a.hi >= hi, "{lo} {hi}: {a:?}");
            let step = a.ticks[1].0 - a.ticks[0].0;
            let m = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0]
                    .iter()
                    .any(|c| (m - c).abs() < 1e-3 || (m - 10.0).abs() < 1e-3),
                "{step}"
            );
        }
    }

    #[test]
    fn log_ticks_use_decades_or_one_two_five() {
        let a = choose_ticks(0.001, 100.0, true);
        assert_eq!(labels(&a), ["0.001", "0.01", "0.1", "1", "10", "100"]);
        let a = choose_ticks(1e-7, 1.0, true);
        assert_eq!(labels(&a), ["1e-8", "1e-6", "1e-4", "0.01", "1"]);
        let a = choose_ticks(0.4, 20.0, true);
        assert_eq!(labels(&a), ["0.5", "1", "2", "5", "10", "20"]);
        // a narrow range still gets 4–6 positive ticks
        let a = choose_ticks(0.8, 1.3, true);
        assert!(
            (4..=6).contains(&a.ticks.len()) && a.ticks.iter().all(|t| t.0 > 0.0),
            "{a:?}"
        );
        // the axis fits positive values only, and a log-axis frac is logarithmic
        let a = Axis::fit([-1.0, 0.0, 0.01, 10.0, f64::NAN].into_iter(), true).unwrap();
        assert!(a.lo <= 0.01 && a.lo > 0.0 && a.hi >= 10.0);
        let mid = (a.frac(0.01) + a.frac(10.0)) / 2.0;
        assert!((a.frac(10f64.powf(-0.5)) - mid).abs() < 1e-9);
    }

    #[test]
    fn series_colours_land_in_the_plot_area_and_the_legend_is_drawn() {
        let c = chart(
            vec![
                series("a", &[(0.0, 1.0), (50.0, 3.0), (100.0, 2.0)]),
                series("b", &[(0.0, 2.0), (100.0, 0.5)]),
            ],
            false,
        );
        let (w, h) = (640, 300);
        let img = render(std::slice::from_ref(&c), w, h);
        assert_eq!((img.width, img.height), (w, h));
        let l = layout(&c, w as i64, h as i64);
        let plot = l.plot.unwrap();
        let inside = region(&img, plot);
        assert!(inside.contains(&COLOURS[0]) && inside.contains(&COLOURS[1]));
        // the data (markers included) stays inside the frame: outside it and left of the
        // legend, no series colour; also when the 2% margin is under a pixel
        for (w, h) in [(w, h), (220, 100)] {
            let img = render(std::slice::from_ref(&c), w, h);
            let l = layout(&c, w as i64, h as i64);
            let [x0, y0, x1, y1] = l.plot.unwrap();
            for (x, y) in (0..h as i64).flat_map(|y| (0..l.legend_x).map(move |x| (x, y))) {
                let outside = !(x0..x1).contains(&x) || !(y0..y1).contains(&y);
                let p = px(&img, x, y);
                assert!(
                    !outside || !COLOURS[..2].contains(&p),
                    "{w}x{h}: ({x}, {y})"
                );
            }
        }
        // the frame is drawn just outside the data area
        assert_eq!(px(&img, plot[0] - 1, (plot[1] + plot[3]) / 2), FG);
        // the legend: a swatch per series and text beside it
        let (lx, ly) = (l.legend_x, plot[1]);
        assert_eq!(px(&img, lx + 5, ly + 5), COLOURS[0]);
        assert_eq!(px(&img, lx + 5, ly + LEGEND_ROW + 5), COLOURS[1]);
        assert!(region(&img, [lx + 22, ly, lx + 40, ly + LINE]).contains(&FG));
        // tick labels left of the y axis, and the title at the top
        assert!(region(&img, [0, plot[1], plot[0] - 7, plot[3]]).contains(&FG));
        assert!(region(&img, [0, 0, w as i64, 12]).contains(&FG));
        // the y value 3.0 (the top of series a) is drawn near the top of the plot
        let ya = l.y.as_ref().unwrap();
        assert!(ya.hi >= 3.0 && ya.lo <= 0.5);
    }

    #[test]
    fn bad_points_are_skipped_and_empty_charts_say_no_data() {
        let nan = f64::NAN;
        let c = chart(
            vec![series(
                "a",
                &[
                    (0.0, nan),
                    (1.0, 2.0),
                    (f64::INFINITY, 1.0),
                    (2.0, 4.0),
                    (3.0, -1.0),
                ],
            )],
            true,
        );
        let l = layout(&c, 400, 200);
        // log axis: NaN, inf and the non-positive value are left out of the range
        let (xa, ya) = (l.x.unwrap(), l.y.unwrap());
        assert!(xa.lo <= 1.0 && xa.hi >= 2.0 && xa.hi < 3.0, "{xa:?}");
        assert!(ya.lo > 0.0 && ya.lo <= 2.0 && ya.hi >= 4.0, "{ya:?}");
        let img = render(&[c], 400, 200);
        assert!(img.data.chunks(3).any(|p| p == COLOURS[0]));
        // nothing drawable: a "no data" message in the plot area, no series colour
        let empty = chart(vec![series("a", &[]), series("b", &[(nan, nan)])], false);
        let l = layout(&empty, 400, 200);
        assert!(l.x.is_none() && l.y.is_none());
        let img = render(std::slice::from_ref(&empty), 400, 200);
        let plot = l.plot.unwrap();
        assert!(region(&img, plot).contains(&FG));
        assert!(!region(&img, plot).contains(&COLOURS[0]));
        assert_eq!(legend_label(&empty.series[0], false), "a (no data)");
        // no charts, tiny and huge sizes: no panic
        let img = render(&[], 100, 50);
        assert_eq!((img.width, img.height), (100, 50));
        assert!(img.data.chunks(3).any(|p| p == FG));
        for (w, h) in [(0, 0), (1, 1), (30, 20)] {
            render(std::slice::from_ref(&empty), w, h);
        }
        let wild = chart(
            vec![series("a", &[(-1e308, -1e308), (1e308, 1e308)])],
            false,
        );
        render(&[wild], 200, 150);
    }

    #[test]
    fn a_single_point_is_drawn_as_a_marker() {
        let c = chart(vec![series("only", &[(7.0, 0.25)])], false);
        let l = layout(&c, 300, 200);
        let (xa, ya) = (l.x.clone().unwrap(), l.y.clone().unwrap());
        assert!(xa.lo < 7.0 && xa.hi > 7.0 && ya.lo < 0.25 && ya.hi > 0.25);
        let img = render(&[c], 300, 200);
        let [x0, y0, x1, y1] = l.plot.unwrap();
        let cx = (x0 as f64 + xa.frac(7.0) * (x1 - 1 - x0) as f64).round() as i64;
        let cy = (y1 as f64 - 1.0 - ya.frac(0.25) * (y1 - 1 - y0) as f64).round() as i64;
        let marker = region(&img, [cx - 3, cy - 3, cx + 4, cy + 4]);
        assert!(marker.iter().all(|&p| p == COLOURS[0]), "{marker:?}");
    }

    #[test]
    fn log_charts_are_labelled_and_stack_vertically() {
        let c = chart(vec![series("a", &[(0.0, 0.01), (10.0, 10.0)])], true);
        let c2 = chart(vec![series("b", &[(0.0, 1.0), (10.0, 2.0)])], false);
        let img = render(&[c.clone(), c2], 500, 220);
        assert_eq!(img.height, 440);
        let top: Vec<_> = img.data[..500 * 220 * 3].chunks(3).collect();
        let bottom: Vec<_> = img.data[500 * 220 * 3..].chunks(3).collect();
        assert!(top.contains(&&COLOURS[0][..]) && !top.contains(&&COLOURS[1][..]));
        assert!(bottom.contains(&&COLOURS[0][..]));
        // the y label row says "(log scale)": it is wider than the bare label
        let l = layout(&c, 500, 220);
        let [_, y0, ..] = l.plot.unwrap();
        let row = |img: &RgbImage, x0: i64, x1: i64| region(img, [x0, y0 - LINE - 10, x1, y0 - 10]);
        let bare = draw::text_width("loss", 1) + PAD + 4;
        assert!(row(&img, bare, bare + 80).contains(&FG));
        assert_eq!(labels(l.y.as_ref().unwrap()), ["0.01", "0.1", "1", "10"]);
    }

    const METRICS: &str = r#"{"step": 0, "epoch": 0, "loss": 4.0, "terms": {"loss_obj_ce": 1.0, "loss_obj_ce_0": 1.5, "loss_verb_ce": 0.5, "class_error_1": 3}}
{"step": 1, "epoch": 0, "loss": null, "terms": {"loss_obj_ce": 0.8, "loss_verb_ce": null}}

{"step": 2, "epoch": 1, "loss": 3.0, "grad_norm": 2.0}
{"step": 3, "epoch": 1, "loss": 2.0}
{"eval": {"step": 3, "epoch": 1, "metrics": {"map_full": 0.1, "map_rare": 0.05, "per_class": [1, 2]}}}
"#;

    #[test]
    fn metrics_become_loss_term_and_eval_charts() {
        let charts = charts_from_metrics(METRICS).unwrap();
        assert_eq!(charts.len(), 3);
        let [loss, terms, eval] = &charts[..] else {
            unreachable!()
        };
        assert_eq!(loss.title, "training loss (steps 0-3, epochs 0-1)");
        assert_eq!(loss.series[0].name, "loss");
        assert_eq!(loss.series[0].points.len(), 4);
        assert!(loss.series[0].points[1].1.is_nan());
        // moving average over 2 steps of the finite values
        assert_eq!(loss.series[1].name, "moving avg (2 steps)");
        let avg: Vec<f64> = loss.series[1].points.iter().map(|p| p.1).collect();
        assert_eq!(avg, [4.0, 4.0, 3.0, 2.5]);
        assert!(terms.log_y && !loss.log_y && !eval.log_y);
        let names: Vec<&str> = terms.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["loss_obj_ce", "loss_verb_ce"]);
        assert_eq!(terms.series[0].points, [(0.0, 1.0), (1.0, 0.8)]);
        let names: Vec<&str> = eval.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["map_full", "map_rare"]);
        assert_eq!(eval.series[0].points, [(3.0, 0.1)]);
        // only loss lines: a single chart; nothing: one chart that says no data
        assert_eq!(
            charts_from_metrics(r#"{"step":1,"loss":1}"#).unwrap().len(),
            1
        );
        let none = charts_from_metrics("\n").unwrap();
        assert_eq!(none.len(), 1);
        assert!(none[0].series[0].points.is_empty());
    }

    #[test]
    fn malformed_metrics_lines_are_named() {
        let cases = [
            ("{\"step\": 0, \"loss\": 1}\nnot json", 2, "JSON"),
            ("\n\n[1, 2]", 3, "object"),
            ("{\"loss\": 1}", 1, "`step`"),
            ("{\"step\": 0}", 1, "`loss`"),
            ("{\"step\": 0, \"loss\": \"x\"}", 1, "`loss`"),
            ("{\"step\": 0, \"loss\": 1, \"terms\": [1]}", 1, "`terms`"),
            (
                "{\"step\": 0, \"loss\": 1, \"terms\": {\"a\": \"b\"}}",
                1,
                "`a`",
            ),
            ("{\"step\": 0, \"loss\": 1, \"epoch\": \"e\"}", 1, "`epoch`"),
            ("{\"eval\": {\"metrics\": {}}}", 1, "`eval.step`"),
            ("{\"eval\": {\"step\": 1}}", 1, "`eval.metrics`"),
            ("{\"eval\": 3}", 1, "`eval`"),
        ];
        for (text, line, what) in cases {
            match charts_from_metrics(text) {
                Err(e @ PlotError::Metrics { line: l, .. }) => {
                    assert_eq!(l, line, "{text}: {e}");
                    let msg = e.to_string();
                    assert!(
                        msg.starts_with(&format!("metrics line {line}:")) && msg.contains(what),
                        "{msg}"
                    );
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn aux_suffixes_and_text_fitting() {
        assert!(is_aux("loss_obj_ce_0") && is_aux("loss_verb_ce_12"));
        assert!(!is_aux("loss_obj_ce") && !is_aux("loss_") && !is_aux("l0"));
        assert_eq!(fit_text("abcdef", 48), "abcdef");
        assert_eq!(fit_text("abcdefgh", 48), "abcd..");
        assert_eq!(fit_text("abc", 8), "a");
        assert_eq!(fit_text("abc", -5), "");
    }
}
