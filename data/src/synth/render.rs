//! Rendering of a laid-out [`Scene`]: a textured background, stick-figure persons whose pose
//! shows their relations (arm out to a held object, arms up to a carried one, leg out to a
//! kicked ball, legs astride a ridden object, eyes turned to a watched object) and nine object
//! kinds with distinct shapes, colours and textures. Every shape is clipped to its box, so the
//! annotated boxes are tight and honest.

use super::scene::{IBox, Object, Person, Rng, Scene};
use super::{
    BALL, BICYCLE, BIRD, BOX, CARRY, CUP, HOLD, HORSE, KICK, KITE, LOOK_AT, RIDE, SKATEBOARD,
    UMBRELLA,
};
use crate::preprocess::RgbImage;

type Rgb = [u8; 3];

/// Drawing clipped to a rectangle `[x0, y0, x1, y1)`.
struct Canvas<'a> {
    img: &'a mut RgbImage,
    clip: IBox,
}

impl Canvas<'_> {
    fn put(&mut self, x: i32, y: i32, c: Rgb) {
        let [x0, y0, x1, y1] = self.clip;
        if x >= x0 && y >= y0 && x < x1 && y < y1 {
            let i = (y as usize * self.img.width + x as usize) * 3;
            self.img.data[i..i + 3].copy_from_slice(&c);
        }
    }

    fn blend(&mut self, x: i32, y: i32, c: Rgb, a: f64) {
        let [x0, y0, x1, y1] = self.clip;
        if x >= x0 && y >= y0 && x < x1 && y < y1 {
            let i = (y as usize * self.img.width + x as usize) * 3;
            for (d, &s) in self.img.data[i..i + 3].iter_mut().zip(&c) {
                let v = f64::from(*d) * (1.0 - a) + f64::from(s) * a;
                *d = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }

    /// Pixel range `[lo, hi)` covering `[a, b]`, clipped.
    fn span(&self, a: f64, b: f64, axis: usize) -> (i32, i32) {
        let lo = (a.floor() as i32).max(self.clip[axis]);
        let hi = (b.ceil() as i32 + 1).min(self.clip[axis + 2]);
        (lo, hi)
    }

    fn rect(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, c: Rgb) {
        let (xa, xb) = self.span(x0, x1, 0);
        let (ya, yb) = self.span(y0, y1, 1);
        for y in ya..yb {
            for x in xa..xb {
                let (px, py) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
                if px >= x0 && px < x1 && py >= y0 && py < y1 {
                    self.put(x, y, c);
                }
            }
        }
    }

    fn ellipse(&mut self, cx: f64, cy: f64, rx: f64, ry: f64, c: Rgb) {
        let (rx, ry) = (rx.max(0.5), ry.max(0.5));
        let (xa, xb) = self.span(cx - rx, cx + rx, 0);
        let (ya, yb) = self.span(cy - ry, cy + ry, 1);
        for y in ya..yb {
            for x in xa..xb {
                let dx = (f64::from(x) + 0.5 - cx) / rx;
                let dy = (f64::from(y) + 0.5 - cy) / ry;
                if dx * dx + dy * dy <= 1.0 {
                    self.put(x, y, c);
                }
            }
        }
    }

    fn ring(&mut self, cx: f64, cy: f64, r: f64, thick: f64, c: Rgb) {
        let (xa, xb) = self.span(cx - r, cx + r, 0);
        let (ya, yb) = self.span(cy - r, cy + r, 1);
        for y in ya..yb {
            for x in xa..xb {
                let d = (f64::from(x) + 0.5 - cx).hypot(f64::from(y) + 0.5 - cy);
                if d <= r && d >= r - thick {
                    self.put(x, y, c);
                }
            }
        }
    }

    /// Even-odd polygon fill (pixel centres).
    fn poly(&mut self, pts: &[(f64, f64)], c: Rgb) {
        let (mut xl, mut xh, mut yl, mut yh) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            xl = xl.min(x);
            xh = xh.max(x);
            yl = yl.min(y);
            yh = yh.max(y);
        }
        let (xa, xb) = self.span(xl, xh, 0);
        let (ya, yb) = self.span(yl, yh, 1);
        for y in ya..yb {
            let py = f64::from(y) + 0.5;
            for x in xa..xb {
                let px = f64::from(x) + 0.5;
                let mut inside = false;
                let mut j = pts.len() - 1;
                for i in 0..pts.len() {
                    let (xi, yi) = pts[i];
                    let (xj, yj) = pts[j];
                    if (yi > py) != (yj > py) && px < (xj - xi) * (py - yi) / (yj - yi) + xi {
                        inside = !inside;
                    }
                    j = i;
                }
                if inside {
                    self.put(x, y, c);
                }
            }
        }
    }

    /// A thick segment with round caps.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), thick: f64, c: Rgb) {
        let r = (0.5 * thick).max(0.5);
        let (xa, xb) = self.span(a.0.min(b.0) - r, a.0.max(b.0) + r, 0);
        let (ya, yb) = self.span(a.1.min(b.1) - r, a.1.max(b.1) + r, 1);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        for y in ya..yb {
            for x in xa..xb {
                let (px, py) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
                let t = if len2 > 0.0 {
                    (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (qx, qy) = (a.0 + t * dx - px, a.1 + t * dy - py);
                if qx * qx + qy * qy <= r * r {
                    self.put(x, y, c);
                }
            }
        }
    }

    fn polyline(&mut self, pts: &[(f64, f64)], thick: f64, c: Rgb) {
        for w in pts.windows(2) {
            self.line(w[0], w[1], thick, c);
        }
    }
}

/// Maps unit coordinates of a box (facing right) to pixels, mirrored when `flip`.
#[derive(Clone, Copy)]
struct Frame {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    flip: bool,
}

impl Frame {
    fn new(b: IBox, flip: bool) -> Self {
        Frame {
            x0: f64::from(b[0]),
            y0: f64::from(b[1]),
            w: f64::from(b[2] - b[0]),
            h: f64::from(b[3] - b[1]),
            flip,
        }
    }

    fn p(&self, u: f64, v: f64) -> (f64, f64) {
        let u = if self.flip { 1.0 - u } else { u };
        (self.x0 + u * self.w, self.y0 + v * self.h)
    }

    fn pts(&self, uv: &[(f64, f64)]) -> Vec<(f64, f64)> {
        uv.iter().map(|&(u, v)| self.p(u, v)).collect()
    }
}

fn jitter(rng: &mut Rng, c: Rgb, amount: f64) -> Rgb {
    c.map(|v| {
        (f64::from(v) + rng.range(-amount, amount))
            .round()
            .clamp(0.0, 255.0) as u8
    })
}

fn scale(c: Rgb, f: f64) -> Rgb {
    c.map(|v| (f64::from(v) * f).round().clamp(0.0, 255.0) as u8)
}

fn lighten(c: Rgb, f: f64) -> Rgb {
    c.map(|v| (f64::from(v) + (255.0 - f64::from(v)) * f).round() as u8)
}

/// A saturated colour of random hue.
fn vivid(rng: &mut Rng) -> Rgb {
    let h = rng.range(0.0, 6.0);
    let s = rng.range(0.6, 0.95);
    let v = rng.range(0.65, 0.95);
    let c = v * s;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r, g, b].map(|t| ((t + m) * 255.0).round() as u8)
}

fn background(img: &mut RgbImage, seed: u64) {
    let mut rng = Rng::new(seed);
    let (w, h) = (img.width as i32, img.height as i32);
    let hf = f64::from(h);
    let kind = rng.below(3);
    let horizon = (rng.range(0.3, 0.6) * hf).round() as i32;
    let (top, bottom) = match kind {
        0 => {
            let sky = jitter(&mut rng, [150, 190, 225], 20.0);
            let ground = rng.pick(&[[95, 140, 70], [170, 150, 105], [120, 110, 90]]);
            (sky, jitter(&mut rng, ground, 18.0))
        }
        1 => {
            let wall = rng.pick(&[[205, 195, 170], [185, 185, 190], [200, 180, 180]]);
            let floor = rng.pick(&[[140, 105, 75], [120, 120, 125], [160, 130, 95]]);
            (jitter(&mut rng, wall, 15.0), jitter(&mut rng, floor, 15.0))
        }
        _ => {
            let c = jitter(&mut rng, [150, 150, 140], 35.0);
            (c, scale(c, 0.85))
        }
    };
    let mut cv = Canvas {
        img,
        clip: [0, 0, w, h],
    };
    for y in 0..h {
        let (base, t) = if kind == 2 || y < horizon {
            (top, f64::from(y) / hf)
        } else {
            (bottom, f64::from(y - horizon) / hf)
        };
        let c = scale(base, 1.05 - 0.15 * t);
        for x in 0..w {
            cv.put(x, y, c);
        }
    }
    if kind == 1 {
        // Floor planks.
        let step = rng.range(6.0, 12.0);
        let mut y = f64::from(horizon) + step;
        while y < hf {
            cv.line((0.0, y), (f64::from(w), y), 1.0, scale(bottom, 0.8));
            y += step;
        }
    }
    // Low-contrast clutter blobs.
    for _ in 0..3 + rng.below(4) {
        let c = jitter(&mut rng, [128, 128, 128], 60.0);
        let (cx, cy) = (rng.range(0.0, f64::from(w)), rng.range(0.0, hf));
        let (rx, ry) = (rng.range(4.0, 22.0), rng.range(3.0, 14.0));
        let a = rng.range(0.1, 0.25);
        let (xa, xb) = cv.span(cx - rx, cx + rx, 0);
        let (ya, yb) = cv.span(cy - ry, cy + ry, 1);
        for y in ya..yb {
            for x in xa..xb {
                let dx = (f64::from(x) + 0.5 - cx) / rx;
                let dy = (f64::from(y) + 0.5 - cy) / ry;
                if dx * dx + dy * dy <= 1.0 {
                    cv.blend(x, y, c, a);
                }
            }
        }
    }
    add_noise(img, &mut rng, 9);
}

/// Adds uniform noise in `[-amp, amp]` to every channel.
fn add_noise(img: &mut RgbImage, rng: &mut Rng, amp: i32) {
    let span = (2 * amp + 1) as u64;
    let mut bits = 0u64;
    for (i, v) in img.data.iter_mut().enumerate() {
        if i % 4 == 0 {
            bits = rng.next_u64();
        }
        let r = (((bits & 0xFFFF) * span) >> 16) as i32 - amp;
        bits >>= 16;
        *v = (i32::from(*v) + r).clamp(0, 255) as u8;
    }
}

const SKINS: [Rgb; 5] = [
    [241, 194, 160],
    [224, 172, 125],
    [198, 134, 90],
    [141, 85, 50],
    [95, 60, 40],
];

/// How a person stands, from its relations.
#[derive(Debug, Default, Clone)]
struct Pose {
    /// Hand height of a held object, per side (0 left, 1 right).
    hold: [Option<f64>; 2],
    /// Left and right x of a carried object's bottom.
    carry: Option<(f64, f64)>,
    /// Side of a kicked object.
    kick: Option<usize>,
    ride: bool,
    /// Side of a watched object.
    look: Option<usize>,
}

fn pose_of(scene: &Scene, pi: usize) -> Pose {
    let p = scene.persons[pi].bx;
    let pcx = 0.5 * f64::from(p[0] + p[2]);
    let mut pose = Pose::default();
    for pair in scene.pairs.iter().filter(|q| q.person == pi) {
        let o = scene.objects[pair.object].bx;
        let ocx = 0.5 * f64::from(o[0] + o[2]);
        let ocy = 0.5 * f64::from(o[1] + o[3]);
        let side = usize::from(ocx > pcx);
        if pair.rels & HOLD != 0 {
            pose.hold[side] = Some(ocy);
        }
        if pair.rels & CARRY != 0 {
            pose.carry = Some((f64::from(o[0]), f64::from(o[2])));
        }
        if pair.rels & KICK != 0 {
            pose.kick = Some(side);
        }
        if pair.rels & RIDE != 0 {
            pose.ride = true;
        }
        if pair.rels & LOOK_AT != 0 {
            pose.look = Some(side);
        }
    }
    pose
}

struct PersonColours {
    skin: Rgb,
    shirt: Rgb,
    pants: Rgb,
    hair: Rgb,
}

fn person_colours(p: &Person) -> PersonColours {
    let mut rng = Rng::new(p.style);
    let skin = rng.pick(&SKINS);
    let skin = jitter(&mut rng, skin, 10.0);
    PersonColours {
        skin,
        shirt: vivid(&mut rng),
        pants: jitter(&mut rng, [50, 55, 80], 30.0),
        hair: jitter(&mut rng, [45, 30, 20], 20.0),
    }
}

/// Hand position of a held object at height `y` on `side`.
fn hand(p: IBox, side: usize, y: f64, t: f64) -> (f64, f64) {
    let h = f64::from(p[3] - p[1]);
    let py0 = f64::from(p[1]);
    let x = if side == 0 {
        f64::from(p[0]) + 0.5 * t
    } else {
        f64::from(p[2]) - 0.5 * t
    };
    (x, y.clamp(py0 + 0.3 * h, py0 + 0.56 * h))
}

fn limb_thickness(p: IBox) -> f64 {
    (f64::from(p[2] - p[0]) / 7.5).max(2.0)
}

fn draw_person(img: &mut RgbImage, person: &Person, pose: &Pose) {
    let b = person.bx;
    let col = person_colours(person);
    let mut cv = Canvas { img, clip: b };
    let (x0, y0, x1, y1) = (
        f64::from(b[0]),
        f64::from(b[1]),
        f64::from(b[2]),
        f64::from(b[3]),
    );
    let (w, h) = (x1 - x0, y1 - y0);
    let cx = 0.5 * (x0 + x1);
    let t = limb_thickness(b);
    let r = 0.11 * h;
    let head = (cx, y0 + r);
    let neck_y = y0 + 2.0 * r;
    let hip_y = y0 + 0.58 * h;
    let sh_y = neck_y + 0.05 * h;
    let sgn = [-1.0, 1.0];
    // Legs.
    for (side, &s) in sgn.iter().enumerate() {
        let hip = (cx + s * 0.08 * w, hip_y);
        if pose.ride {
            let knee = (cx + s * 0.42 * w, hip_y + 0.18 * h);
            let foot = (cx + s * 0.36 * w, y1 - 0.5 * t);
            cv.polyline(&[hip, knee, foot], t + 1.0, col.pants);
        } else if pose.kick == Some(side) {
            let foot = (cx + s * (0.5 * w - 0.5 * t), y1 - 0.08 * h);
            cv.line(hip, foot, t + 1.0, col.pants);
            cv.ellipse(foot.0, foot.1, 0.5 * t + 0.5, 0.5 * t, [35, 30, 30]);
        } else {
            let foot = (cx + s * 0.22 * w, y1 - 0.5 * t);
            cv.line(hip, foot, t + 1.0, col.pants);
            cv.rect(
                foot.0 - 0.5 * t - 0.5,
                y1 - t * 0.8,
                foot.0 + 0.5 * t + 1.0,
                y1,
                [35, 30, 30],
            );
        }
    }
    // Torso.
    cv.poly(
        &[
            (cx - 0.2 * w, neck_y),
            (cx + 0.2 * w, neck_y),
            (cx + 0.17 * w, hip_y + 1.0),
            (cx - 0.17 * w, hip_y + 1.0),
        ],
        col.shirt,
    );
    // Arms.
    for (side, &s) in sgn.iter().enumerate() {
        let shoulder = (cx + s * 0.17 * w, sh_y);
        let end = if let Some(y) = pose.hold[side] {
            hand(b, side, y, t)
        } else if let Some((ox0, ox1)) = pose.carry {
            let hx = if side == 0 { ox0 + 1.5 } else { ox1 - 1.5 };
            (hx.clamp(x0 + 0.5 * t, x1 - 0.5 * t), y0 + 0.5 * t)
        } else {
            (cx + s * 0.34 * w, y0 + 0.6 * h)
        };
        let elbow = (
            0.5 * (shoulder.0 + end.0) + s * 0.04 * w,
            0.5 * (shoulder.1 + end.1),
        );
        cv.polyline(&[shoulder, elbow], t, col.shirt);
        cv.polyline(&[elbow, end], t, col.skin);
        cv.ellipse(end.0, end.1, 0.5 * t + 0.3, 0.5 * t + 0.3, col.skin);
    }
    // Head, hair, eyes.
    cv.ellipse(head.0, head.1, r, r, col.skin);
    cv.poly(
        &[
            (head.0 - r, head.1 - 0.1 * r),
            (head.0 - 0.7 * r, head.1 - 0.8 * r),
            (head.0, head.1 - 1.05 * r),
            (head.0 + 0.7 * r, head.1 - 0.8 * r),
            (head.0 + r, head.1 - 0.1 * r),
            (head.0, head.1 - 0.55 * r),
        ],
        col.hair,
    );
    let eye_y = head.1 + 0.05 * r;
    let shift = match pose.look {
        Some(0) => -0.45 * r,
        Some(_) => 0.45 * r,
        None => 0.0,
    };
    let er = (0.17 * r).max(0.7);
    for s in sgn {
        cv.ellipse(head.0 + shift + s * 0.38 * r, eye_y, er, er, [20, 20, 25]);
    }
}

fn draw_object(img: &mut RgbImage, o: &Object) {
    let mut rng = Rng::new(o.style);
    let f = Frame::new(o.bx, o.flip);
    let mut cv = Canvas { img, clip: o.bx };
    match o.kind {
        BALL => {
            let pick = rng.pick(&[
                [220, 40, 40],
                [240, 140, 30],
                [240, 220, 60],
                [235, 235, 235],
                [40, 90, 210],
            ]);
            let base = jitter(&mut rng, pick, 20.0);
            let (cx, cy) = f.p(0.5, 0.5);
            let r = 0.5 * f.w;
            cv.ellipse(cx, cy, r, r, base);
            let dark = scale(base, 0.45);
            match rng.below(3) {
                0 => {
                    cv.line(f.p(0.0, 0.35), f.p(1.0, 0.65), 1.5, dark);
                    cv.line(f.p(0.35, 0.0), f.p(0.65, 1.0), 1.5, dark);
                }
                1 => {
                    for (u, v) in [
                        (0.5, 0.5),
                        (0.25, 0.3),
                        (0.75, 0.3),
                        (0.3, 0.75),
                        (0.7, 0.75),
                    ] {
                        let (x, y) = f.p(u, v);
                        cv.ellipse(x, y, 0.12 * f.w, 0.12 * f.w, dark);
                    }
                }
                _ => {
                    let clip = cv.clip;
                    cv.clip = [clip[0], o.bx[1] + (o.bx[3] - o.bx[1]) / 2, clip[2], clip[3]];
                    cv.ellipse(cx, cy, r, r, vivid(&mut rng));
                    cv.clip = clip;
                }
            }
            cv.ring(cx, cy, r, 1.0, scale(base, 0.6));
            let (hx, hy) = f.p(0.33, 0.3);
            cv.ellipse(hx, hy, 0.12 * f.w, 0.1 * f.w, lighten(base, 0.6));
        }
        BOX => {
            let pick = rng.pick(&[[150, 100, 50], [190, 150, 90], [120, 80, 45]]);
            let base = jitter(&mut rng, pick, 18.0);
            let dark = scale(base, 0.55);
            cv.rect(f.x0, f.y0, f.x0 + f.w, f.y0 + f.h, base);
            for v in [0.33, 0.66] {
                cv.line(f.p(0.0, v), f.p(1.0, v), 1.0, scale(base, 0.8));
            }
            cv.line(f.p(0.0, 0.0), f.p(1.0, 1.0), 1.6, dark);
            cv.line(f.p(1.0, 0.0), f.p(0.0, 1.0), 1.6, dark);
            let t = 1.6;
            cv.rect(f.x0, f.y0, f.x0 + f.w, f.y0 + t, dark);
            cv.rect(f.x0, f.y0 + f.h - t, f.x0 + f.w, f.y0 + f.h, dark);
            cv.rect(f.x0, f.y0, f.x0 + t, f.y0 + f.h, dark);
            cv.rect(f.x0 + f.w - t, f.y0, f.x0 + f.w, f.y0 + f.h, dark);
        }
        KITE => {
            let a = vivid(&mut rng);
            let b = vivid(&mut rng);
            let top = f.p(0.5, 0.0);
            let right = f.p(1.0, 0.3);
            let bottom = f.p(0.5, 0.64);
            let left = f.p(0.0, 0.3);
            cv.poly(&[top, bottom, left], a);
            cv.poly(&[top, right, bottom], b);
            let stick = [40, 35, 30];
            cv.line(top, bottom, 1.0, stick);
            cv.line(left, right, 1.0, stick);
            let tail = f.pts(&[(0.5, 0.64), (0.38, 0.76), (0.6, 0.88), (0.45, 1.0)]);
            cv.polyline(&tail, 1.2, stick);
            for &(x, y) in &tail[1..3] {
                cv.rect(x - 1.5, y - 1.0, x + 1.5, y + 1.0, a);
            }
        }
        HORSE => {
            let pick = rng.pick(&[[120, 75, 40], [60, 45, 35], [200, 190, 175], [150, 110, 70]]);
            let base = jitter(&mut rng, pick, 15.0);
            let dark = scale(base, 0.5);
            // Tail, legs, body, neck, head.
            cv.line(f.p(0.16, 0.34), f.p(0.03, 0.72), 2.0, dark);
            for u in [0.22, 0.32, 0.62, 0.72] {
                let top = f.p(u, 0.5);
                let foot = f.p(u + 0.01, 0.97);
                cv.line(top, foot, (0.07 * f.w).max(2.0), base);
                cv.rect(
                    foot.0 - 0.04 * f.w,
                    f.y0 + 0.92 * f.h,
                    foot.0 + 0.04 * f.w,
                    f.y0 + f.h,
                    [30, 25, 20],
                );
            }
            let (bx, by) = f.p(0.46, 0.45);
            cv.ellipse(bx, by, 0.32 * f.w, 0.18 * f.h, base);
            cv.poly(
                &f.pts(&[(0.66, 0.32), (0.8, 0.06), (0.9, 0.1), (0.78, 0.5)]),
                base,
            );
            let (hx, hy) = f.p(0.89, 0.15);
            cv.ellipse(hx, hy, 0.1 * f.w, 0.1 * f.h, base);
            cv.poly(
                &f.pts(&[(0.88, 0.1), (1.0, 0.2), (0.99, 0.3), (0.9, 0.26)]),
                base,
            );
            cv.poly(&f.pts(&[(0.82, 0.08), (0.84, 0.0), (0.87, 0.07)]), dark);
            cv.line(f.p(0.8, 0.06), f.p(0.68, 0.32), 2.0, dark);
            let (ex, ey) = f.p(0.9, 0.13);
            cv.ellipse(ex, ey, 0.8, 0.8, [10, 10, 10]);
        }
        BICYCLE => {
            let frame = vivid(&mut rng);
            let tyre = [35, 35, 40];
            let r = (0.24 * f.w).min(0.5 * f.h);
            let rear = f.p(0.0, 1.0);
            let rear = (rear.0 + if f.flip { -r } else { r }, rear.1 - r);
            let front = f.p(1.0, 1.0);
            let front = (front.0 + if f.flip { r } else { -r }, front.1 - r);
            for c in [rear, front] {
                cv.ring(c.0, c.1, r, 2.0, tyre);
                for k in 0..4 {
                    let a = f64::from(k) * std::f64::consts::FRAC_PI_4;
                    let (dx, dy) = (a.cos() * (r - 1.5), a.sin() * (r - 1.5));
                    cv.line(
                        (c.0 - dx, c.1 - dy),
                        (c.0 + dx, c.1 + dy),
                        0.8,
                        [150, 150, 155],
                    );
                }
            }
            let crank = f.p(0.45, 1.0);
            let crank = (crank.0, crank.1 - r);
            let seat = f.p(0.38, 0.22);
            let head = f.p(0.72, 0.18);
            for (a, b) in [
                (rear, crank),
                (crank, seat),
                (seat, rear),
                (seat, head),
                (head, crank),
                (head, front),
            ] {
                cv.line(a, b, 1.8, frame);
            }
            cv.line(head, f.p(0.78, 0.02), 1.5, frame);
            cv.line(f.p(0.74, 0.03), f.p(0.9, 0.03), 1.6, tyre);
            cv.line(f.p(0.3, 0.14), f.p(0.44, 0.14), 2.2, tyre);
            cv.ellipse(crank.0, crank.1, 1.5, 1.5, tyre);
        }
        CUP => {
            let pick = rng.pick(&[
                [240, 240, 235],
                [170, 210, 240],
                [240, 180, 190],
                [200, 230, 170],
            ]);
            let base = jitter(&mut rng, pick, 12.0);
            let dark = scale(base, 0.5);
            let (hx, hy) = f.p(0.78, 0.45);
            cv.ring(hx, hy, 0.22 * f.w, (0.1 * f.w).max(1.2), scale(base, 0.8));
            cv.poly(
                &f.pts(&[(0.0, 0.06), (0.74, 0.06), (0.64, 1.0), (0.1, 1.0)]),
                base,
            );
            cv.rect(f.x0, f.y0, f.x0 + f.w, f.y0 + 0.14 * f.h, base);
            let (cx, cy) = f.p(0.37, 0.08);
            cv.ellipse(cx, cy, 0.36 * f.w, 0.08 * f.h + 0.5, [90, 55, 30]);
            cv.line(f.p(0.06, 0.5), f.p(0.68, 0.5), 1.2, dark);
        }
        UMBRELLA => {
            let a = vivid(&mut rng);
            let b = lighten(vivid(&mut rng), 0.3);
            let (cx, cy) = f.p(0.5, 0.48);
            let (rx, ry) = (0.5 * f.w, 0.44 * f.h);
            let sectors = 6.0;
            let (xa, xb) = cv.span(cx - rx, cx + rx, 0);
            let (ya, yb) = cv.span(cy - ry, cy, 1);
            for y in ya..yb {
                for x in xa..xb {
                    let dx = (f64::from(x) + 0.5 - cx) / rx;
                    let dy = (f64::from(y) + 0.5 - cy) / ry;
                    if dy <= 0.0 && dx * dx + dy * dy <= 1.0 {
                        let ang = (-dy).atan2(dx) / std::f64::consts::PI * sectors;
                        let c = if (ang as i64) % 2 == 0 { a } else { b };
                        cv.put(x, y, c);
                    }
                }
            }
            let handle = [40, 35, 35];
            cv.line(f.p(0.5, 0.02), f.p(0.5, 0.1), 1.2, handle);
            cv.polyline(
                &f.pts(&[(0.5, 0.48), (0.5, 0.95), (0.58, 0.98), (0.64, 0.88)]),
                1.5,
                handle,
            );
        }
        SKATEBOARD => {
            let base = vivid(&mut rng);
            let board_h = 0.55 * f.h;
            let (x0, y0) = (f.x0, f.y0);
            cv.rect(
                x0 + 0.5 * board_h,
                y0,
                x0 + f.w - 0.5 * board_h,
                y0 + board_h,
                base,
            );
            cv.ellipse(
                x0 + 0.5 * board_h,
                y0 + 0.5 * board_h,
                0.5 * board_h,
                0.5 * board_h,
                base,
            );
            cv.ellipse(
                x0 + f.w - 0.5 * board_h,
                y0 + 0.5 * board_h,
                0.5 * board_h,
                0.5 * board_h,
                base,
            );
            cv.line(
                (x0 + 0.2 * f.w, y0 + 0.5 * board_h),
                (x0 + 0.8 * f.w, y0 + 0.5 * board_h),
                1.0,
                lighten(base, 0.5),
            );
            let wr = 0.5 * (f.h - board_h) + 0.3;
            for u in [0.2, 0.8] {
                let (wx, _) = f.p(u, 0.0);
                cv.ellipse(wx, f.y0 + f.h - wr, wr + 0.4, wr, [30, 30, 30]);
            }
        }
        BIRD => {
            let pick = rng.pick(&[[50, 50, 60], [40, 80, 170], [190, 40, 40], [110, 80, 50]]);
            let base = jitter(&mut rng, pick, 15.0);
            let (bx, by) = f.p(0.45, 0.62);
            cv.poly(
                &f.pts(&[(0.18, 0.6), (0.0, 0.45), (0.0, 0.85)]),
                scale(base, 0.8),
            );
            cv.ellipse(bx, by, 0.3 * f.w, 0.26 * f.h, base);
            let (hx, hy) = f.p(0.74, 0.45);
            cv.ellipse(hx, hy, 0.15 * f.w, 0.2 * f.h, base);
            cv.poly(
                &f.pts(&[(0.86, 0.36), (1.0, 0.46), (0.86, 0.54)]),
                [240, 160, 30],
            );
            cv.poly(
                &f.pts(&[(0.28, 0.58), (0.12, 0.0), (0.58, 0.52)]),
                scale(base, 0.65),
            );
            let (ex, ey) = f.p(0.78, 0.4);
            cv.ellipse(ex, ey, 0.8, 0.8, [250, 250, 250]);
        }
        k => unreachable!("object kind {k} has no drawing"),
    }
}

/// Renders `scene` to an RGB image.
pub(crate) fn render(scene: &Scene) -> RgbImage {
    let n = scene.size as usize;
    let mut img = RgbImage {
        width: n,
        height: n,
        data: vec![0; n * n * 3],
    };
    background(&mut img, scene.background);
    let ridden: Vec<bool> = (0..scene.objects.len())
        .map(|oi| {
            scene
                .pairs
                .iter()
                .any(|p| p.object == oi && p.rels & RIDE != 0)
        })
        .collect();
    for (o, _) in scene.objects.iter().zip(&ridden).filter(|(_, r)| **r) {
        draw_object(&mut img, o);
    }
    let poses: Vec<Pose> = (0..scene.persons.len())
        .map(|i| pose_of(scene, i))
        .collect();
    for (p, pose) in scene.persons.iter().zip(&poses) {
        draw_person(&mut img, p, pose);
    }
    for (o, _) in scene.objects.iter().zip(&ridden).filter(|(_, r)| !**r) {
        draw_object(&mut img, o);
    }
    // Hands over held objects.
    for (p, pose) in scene.persons.iter().zip(&poses) {
        let t = limb_thickness(p.bx);
        let skin = person_colours(p).skin;
        for side in 0..2 {
            if let Some(y) = pose.hold[side] {
                let (x, y) = hand(p.bx, side, y, t);
                let mut cv = Canvas {
                    img: &mut img,
                    clip: p.bx,
                };
                cv.ellipse(x, y, 0.5 * t + 0.4, 0.5 * t + 0.4, skin);
            }
        }
    }
    let mut rng = Rng::new(scene.background ^ 0x5EED);
    add_noise(&mut img, &mut rng, 4);
    img
}
