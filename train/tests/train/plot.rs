//! Plots end to end: a synthetic `metrics.jsonl` becomes charts, written atomically as a PNG that
//! the `image` crate decodes back to the rendered pixels.

use rlip_train::plot::{COLOURS, PlotError, charts_from_metrics, render, write_png};

/// A plausible metrics file: a decaying noisy loss with main and auxiliary terms, a NaN step
/// (written as `null`), and an evaluation every 100 steps.
fn synthetic_metrics() -> String {
    let mut out = String::new();
    for step in 0..400u32 {
        let s = f64::from(step);
        let noise = ((s * 12.9898).sin() * 43758.5453).fract() * 0.3;
        let loss = 6.0 * (-s / 120.0).exp() + 0.8 + noise;
        let loss = if step == 150 {
            "null".to_string()
        } else {
            loss.to_string()
        };
        let term = |scale: f64, rate: f64| scale * (-s / rate).exp() + 0.05 + noise * scale / 10.0;
        out += &format!(
            "{{\"step\": {step}, \"epoch\": {}, \"loss\": {loss}, \"grad_norm\": 1.0, \"terms\": \
             {{\"loss_obj_ce\": {}, \"loss_verb_ce\": {}, \"loss_sub_bbox\": {}, \
             \"loss_obj_giou\": {}, \"loss_obj_ce_0\": {}}}}}\n",
            step / 100,
            term(1.5, 100.0),
            term(3.0, 200.0),
            term(0.4, 60.0),
            term(0.8, 150.0),
            term(2.0, 100.0),
        );
        if step % 100 == 99 {
            let m = 0.05 + s / 2000.0;
            out += &format!(
                "{{\"eval\": {{\"step\": {step}, \"epoch\": {}, \"metrics\": {{\"map_full\": {m}, \
                 \"map_rare\": {}, \"map_nonrare\": {}, \"zero_shot_unseen_map\": {}}}}}}}\n",
                step / 100,
                m * 0.7,
                m * 1.1,
                m * 0.4
            );
        }
    }
    out
}

#[test]
fn metrics_png_round_trips_through_the_image_crate() {
    let charts = charts_from_metrics(&synthetic_metrics()).unwrap();
    assert_eq!(charts.len(), 3);
    assert_eq!(charts[1].series.len(), 4, "aux term left out");
    let dir = std::env::temp_dir().join(format!("rlip-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("metrics.png");
    write_png(&path, &charts, 720, 260).unwrap();
    // overwriting works too, and no temporary file is left behind
    write_png(&path, &charts, 720, 260).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["metrics.png"]);
    let decoded = image::open(&path).unwrap().to_rgb8();
    assert_eq!(decoded.dimensions(), (720, 780));
    let expected = render(&charts, 720, 260);
    assert_eq!(decoded.as_raw(), &expected.data);
    // each chart draws its first colour, and the term chart its fourth
    let chart = |i: u32| (0..720).flat_map(move |x| (i * 260..(i + 1) * 260).map(move |y| (x, y)));
    let has = |i: u32, c: [u8; 3]| chart(i).any(|(x, y)| decoded.get_pixel(x, y).0 == c);
    assert!((0..3).all(|i| has(i, COLOURS[0])));
    assert!(has(1, COLOURS[3]) && has(2, COLOURS[3]) && !has(0, COLOURS[3]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn write_errors_name_the_path() {
    let dir = std::env::temp_dir().join(format!("rlip-plot-missing-{}", std::process::id()));
    let path = dir.join("no/such/dir/plot.png");
    let err = write_png(&path, &[], 100, 100).unwrap_err();
    assert!(matches!(err, PlotError::Io { .. }));
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(!dir.exists());
}
