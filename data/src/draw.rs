//! Drawing detections on an image: boxes, connecting lines and text labels with a built-in 8×8
//! bitmap font (so no font file is needed), and PNG encoding.

use crate::preprocess::RgbImage;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// A palette of well-separated colours for successive triplets.
pub const PALETTE: [Rgb; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [0, 128, 128],
    [170, 110, 40],
];

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb) {
    if x >= 0 && y >= 0 && (x as usize) < img.width && (y as usize) < img.height {
        let i = (y as usize * img.width + x as usize) * 3;
        img.data[i..i + 3].copy_from_slice(&c);
    }
}

/// Fills the rectangle `[x0, x1) × [y0, y1)` (clipped to the image).
pub fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
    for y in y0.max(0)..y1.min(img.height as i64) {
        for x in x0.max(0)..x1.min(img.width as i64) {
            put(img, x, y, c);
        }
    }
}

/// Draws the outline of box `[x0, y0, x1, y1]` (pixels) with the given line thickness.
pub fn draw_box(img: &mut RgbImage, b: [f32; 4], c: Rgb, thickness: i64) {
    if !b.iter().all(|v| v.is_finite()) {
        return;
    }
    let [x0, y0, x1, y1] = b.map(|v| v.round() as i64);
    let t = thickness.max(1);
    fill_rect(img, x0, y0, x1 + 1, y0 + t, c);
    fill_rect(img, x0, y1 + 1 - t, x1 + 1, y1 + 1, c);
    fill_rect(img, x0, y0, x0 + t, y1 + 1, c);
    fill_rect(img, x1 + 1 - t, y0, x1 + 1, y1 + 1, c);
}

/// Draws a line from `a` to `b` with the given thickness.
pub fn draw_line(img: &mut RgbImage, a: [f32; 2], b: [f32; 2], c: Rgb, thickness: i64) {
    if !(a.iter().chain(&b).all(|v| v.is_finite())) {
        return;
    }
    let steps = ((b[0] - a[0]).abs().max((b[1] - a[1]).abs()).ceil() as i64).clamp(1, 1 << 16);
    let h = thickness.max(1) / 2;
    for s in 0..=steps {
        let f = s as f32 / steps as f32;
        let x = (a[0] + f * (b[0] - a[0])).round() as i64;
        let y = (a[1] + f * (b[1] - a[1])).round() as i64;
        fill_rect(
            img,
            x - h,
            y - h,
            x - h + thickness.max(1),
            y - h + thickness.max(1),
            c,
        );
    }
}

/// Width in pixels of `text` drawn at `scale` (8 pixels per character per scale unit).
pub fn text_width(text: &str, scale: i64) -> i64 {
    text.chars().count() as i64 * 8 * scale
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel a `scale`×`scale` block,
/// on a filled background box with a 2·scale margin. Non-ASCII characters are drawn as `?`.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: i64, fg: Rgb, bg: Rgb) {
    let s = scale.max(1);
    let m = 2 * s;
    fill_rect(
        img,
        x,
        y,
        x + text_width(text, s) + 2 * m,
        y + 8 * s + 2 * m,
        bg,
    );
    for (i, ch) in text.chars().enumerate() {
        let code = if ch.is_ascii() {
            ch as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        let gx = x + m + i as i64 * 8 * s;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let px = gx + col * s;
                    let py = y + m + row as i64 * s;
                    fill_rect(img, px, py, px + s, py + s, fg);
                }
            }
        }
    }
}

/// Black or white, whichever reads better on `bg`.
pub fn contrast(bg: Rgb) -> Rgb {
    let l = 0.299 * bg[0] as f32 + 0.587 * bg[1] as f32 + 0.114 * bg[2] as f32;
    if l > 140.0 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}

/// Encodes an image as PNG bytes.
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            &img.data,
            img.width as u32,
            img.height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .expect("in-memory PNG encoding of a well-formed RGB buffer cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(w: usize, h: usize) -> RgbImage {
        RgbImage {
            width: w,
            height: h,
            data: vec![0; w * h * 3],
        }
    }

    #[test]
    fn boxes_and_text_land_where_asked_and_clip() {
        let mut img = blank(40, 30);
        draw_box(&mut img, [5.0, 5.0, 20.0, 15.0], [255, 0, 0], 1);
        let px = |img: &RgbImage, x: usize, y: usize| {
            let i = (y * img.width + x) * 3;
            [img.data[i], img.data[i + 1], img.data[i + 2]]
        };
        assert_eq!(px(&img, 5, 5), [255, 0, 0]);
        assert_eq!(px(&img, 20, 15), [255, 0, 0]);
        assert_eq!(px(&img, 12, 10), [0, 0, 0]);
        // off-image and non-finite input draw nothing and do not panic
        draw_box(&mut img, [-50.0, -50.0, 500.0, 500.0], [0, 255, 0], 3);
        draw_box(&mut img, [f32::NAN, 0.0, 1.0, 1.0], [0, 0, 255], 1);
        draw_line(&mut img, [0.0, 0.0], [1e9, 1e9], [1, 2, 3], 2);
        let mut img = blank(40, 20);
        draw_text(&mut img, 0, 0, "A", 1, [255, 255, 255], [9, 9, 9]);
        // 'A' has set pixels in its 8x8 cell, and the background is filled
        let cell: Vec<_> = (2..10)
            .flat_map(|y| (2..10).map(move |x| (x, y)))
            .map(|(x, y)| px(&img, x, y))
            .collect();
        assert!(cell.contains(&[255, 255, 255]) && cell.contains(&[9, 9, 9]));
        assert_eq!(text_width("abc", 2), 48);
        let png = encode_png(&img);
        assert_eq!(&png[1..4], b"PNG");
    }
}
