//! Scene layout: where persons and objects go, and which relations hold between them.
//!
//! A scene is sampled by rejection: each person is placed with the objects of its intended
//! relations, and the layout is kept only if [`relations_between`] (evaluated on the rounded
//! pixel boxes) gives exactly the intended relations for intended pairs and nothing — even with
//! the wider "loose" zones — for every other (person, object) pair. The annotations therefore
//! agree with the geometry by construction, and unrelated objects stay clearly away from every
//! relation zone.

use super::{
    ABOVE, CARRY, HOLD, KICK, LOOK_AT, NEXT_TO, NUM_OBJECTS, RIDE, TOUCH, implied_relations,
};

pub(crate) use crate::rng::Rng;

/// A pixel box `[x0, y0, x1, y1)` (x1, y1 exclusive).
pub(crate) type IBox = [i32; 4];

pub(crate) fn to_f64(b: IBox) -> [f64; 4] {
    b.map(f64::from)
}

/// Relation bit mask of `person` → `object` (see [`super::relations_between`]); with `loose`,
/// every zone is widened (used to keep unrelated objects clearly outside all zones).
pub(crate) fn relation_mask(person: [f64; 4], object: [f64; 4], loose: bool) -> u32 {
    let [px0, py0, px1, py1] = person;
    let [ox0, oy0, ox1, oy1] = object;
    let (w, h) = (px1 - px0, py1 - py0);
    let pcx = 0.5 * (px0 + px1);
    let (ocx, ocy) = (0.5 * (ox0 + ox1), 0.5 * (oy0 + oy1));
    let dx = (ocx - pcx).abs();
    let hgap = (ox0 - px1).max(px0 - ox1);
    if loose {
        let m = 4.0;
        let inter = ox0 < px1 + m && ox1 > px0 - m && oy0 < py1 + m && oy1 > py0 - m;
        let mut r = 0;
        if inter {
            r |= TOUCH;
        }
        if hgap <= 2.0 * w && ocy >= py0 - 0.4 * h && ocy <= py0 + 0.45 * h {
            r |= LOOK_AT;
        }
        if hgap <= 1.5 * w && (oy1 - py1).abs() <= 0.25 * h {
            r |= NEXT_TO;
        }
        if oy1 <= py0 + 0.1 * h
            && oy1 >= py0 - 1.4 * h
            && ocx >= px0 - 0.3 * w
            && ocx <= px1 + 0.3 * w
        {
            r |= ABOVE;
        }
        return r;
    }
    let inter = ox0 < px1 && ox1 > px0 && oy0 < py1 && oy1 > py0;
    let mut r = 0;
    if inter {
        r |= TOUCH;
        if ocy >= py0 + 0.30 * h && ocy <= py0 + 0.56 * h && dx >= 0.35 * w && oy1 < py1 - 0.2 * h {
            r |= HOLD;
        }
        if oy1 <= py0 + 0.08 * h && dx <= 0.25 * w {
            r |= CARRY;
        }
        if oy1 >= py1 + 2.0 && oy0 >= py0 + 0.35 * h && dx <= 0.35 * w {
            r |= RIDE;
        }
        if oy0 >= py0 + 0.6 * h && (oy1 - py1).abs() <= 0.12 * h && dx >= 0.4 * w {
            r |= KICK;
        }
    } else {
        if hgap >= 2.0 && hgap <= 1.3 * w && ocy >= py0 - 0.15 * h && ocy <= py0 + 0.3 * h {
            r |= LOOK_AT;
        }
        if hgap >= 2.0 && hgap <= 0.9 * w && (oy1 - py1).abs() <= 0.12 * h {
            r |= NEXT_TO;
        }
    }
    if oy1 <= py0 + 0.08 * h && oy1 >= py0 - 0.9 * h && ocx >= px0 && ocx <= px1 {
        r |= ABOVE;
    }
    r
}

/// A person figure; its box is fixed, the pose follows its relations.
#[derive(Debug, Clone)]
pub(crate) struct Person {
    pub bx: IBox,
    /// Seed of the colours.
    pub style: u64,
}

/// A non-person object.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    /// Object class (1..NUM_OBJECTS).
    pub kind: usize,
    pub bx: IBox,
    /// Seed of colours and texture.
    pub style: u64,
    /// Mirrored drawing (facing left).
    pub flip: bool,
}

/// A related (person, object) pair with its relation mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pair {
    pub person: usize,
    pub object: usize,
    pub rels: u32,
}

/// A laid-out image.
#[derive(Debug, Clone)]
pub(crate) struct Scene {
    pub size: i32,
    pub persons: Vec<Person>,
    pub objects: Vec<Object>,
    pub pairs: Vec<Pair>,
    /// Seed of the background.
    pub background: u64,
}

/// Object size ranges at 128 px: (width lo, width hi, height / width lo, hi).
const SIZES: [(f64, f64, f64, f64); NUM_OBJECTS] = [
    (18.0, 24.0, 2.1, 2.4),   // person (unused here)
    (10.0, 14.0, 1.0, 1.0),   // ball
    (12.0, 17.0, 0.85, 1.1),  // box
    (12.0, 16.0, 1.4, 1.6),   // kite
    (36.0, 46.0, 0.62, 0.7),  // horse
    (32.0, 40.0, 0.6, 0.66),  // bicycle
    (9.0, 12.0, 1.05, 1.2),   // cup
    (22.0, 28.0, 0.75, 0.85), // umbrella
    (22.0, 28.0, 0.26, 0.3),  // skateboard
    (12.0, 16.0, 0.65, 0.72), // bird
];

fn object_size(rng: &mut Rng, kind: usize, s: f64) -> (f64, f64) {
    let (wl, wh, al, ah) = SIZES[kind];
    let w = rng.range(wl, wh) * s;
    let h = if al == ah { w } else { w * rng.range(al, ah) };
    // A board must stay thick enough to stand on (see the ride placement).
    let min_h = if kind == super::SKATEBOARD { 6.0 } else { 3.0 };
    (w.round().max(3.0), h.round().max(min_h))
}

fn ibox(x0: f64, y0: f64, w: f64, h: f64) -> IBox {
    let x0 = x0.round() as i32;
    let y0 = y0.round() as i32;
    [x0, y0, x0 + w as i32, y0 + h as i32]
}

fn inside(b: IBox, size: i32) -> bool {
    b[0] >= 1 && b[1] >= 1 && b[2] < size && b[3] < size && b[2] > b[0] && b[3] > b[1]
}

fn overlaps(a: IBox, b: IBox, margin: i32) -> bool {
    a[0] < b[2] + margin && b[0] < a[2] + margin && a[1] < b[3] + margin && b[1] < a[3] + margin
}

/// Places the object of relation `rel` for `person`; `side` is -1 (left) or +1 (right).
fn place_object(rng: &mut Rng, person: IBox, rel: u32, kind: usize, side: f64, s: f64) -> IBox {
    let [px0, py0, px1, py1] = to_f64(person);
    let (w, h) = (px1 - px0, py1 - py0);
    let pcx = 0.5 * (px0 + px1);
    let (ow, oh) = object_size(rng, kind, s);
    let edge = if side < 0.0 { px0 } else { px1 };
    let (cx, y0) = match rel {
        HOLD => {
            let cx = edge + side * rng.range(-0.1, 0.25) * ow;
            let cy = py0 + 0.43 * h + rng.range(-0.04, 0.04) * h;
            (cx, cy - 0.5 * oh)
        }
        CARRY => (
            pcx + rng.range(-0.12, 0.12) * w,
            py0 + rng.range(1.0, 2.0) - oh,
        ),
        RIDE => {
            let cx = pcx + rng.range(-0.15, 0.15) * w;
            // The person's feet reach `k` of the way down the object (standing on a board).
            let y0 = if kind == super::SKATEBOARD {
                py1 - 3.0
            } else {
                py1 - rng.range(0.36, 0.48) * oh
            };
            (cx, y0)
        }
        KICK => {
            let cx = edge + side * rng.range(0.0, 0.25) * ow;
            (cx, py1 + rng.range(-1.0, 2.0) - oh)
        }
        LOOK_AT => {
            let gap = rng.range(4.0, 1.0 * w);
            let cx = edge + side * (gap + 0.5 * ow);
            let cy = py0 + rng.range(-0.05, 0.22) * h;
            (cx, cy - 0.5 * oh)
        }
        NEXT_TO => {
            let gap = rng.range(4.0, 0.7 * w);
            let cx = edge + side * (gap + 0.5 * ow);
            (cx, py1 + rng.range(-0.06, 0.06) * h - oh)
        }
        ABOVE => {
            let gap = rng.range(5.0, 0.6 * h);
            (pcx + rng.range(-0.3, 0.3) * w, py0 - gap - oh)
        }
        _ => unreachable!("not a primary relation"),
    };
    ibox(cx - 0.5 * ow, y0, ow, oh)
}

/// The relation (bit) of a primary-relation index.
pub(crate) fn bit(rel: usize) -> u32 {
    1 << rel
}

/// Everything a new person brings into the scene.
struct Candidate {
    person: Person,
    objects: Vec<Object>,
    rels: Vec<u32>,
}

fn sample_person_box(rng: &mut Rng, size: i32, s: f64) -> IBox {
    let w = (rng.range(18.0, 24.0) * s).round();
    let h = (w * rng.range(2.1, 2.4)).round();
    let x0 = rng.range(2.0, f64::from(size) - w - 2.0);
    let y0 = rng.range(2.0, f64::from(size) - h - 2.0);
    ibox(x0, y0, w, h)
}

/// Tries to lay out a person with the given intents (primary relation index, object kind).
fn try_candidate(
    rng: &mut Rng,
    scene: &Scene,
    intents: &[(usize, usize)],
    s: f64,
) -> Option<Candidate> {
    let size = scene.size;
    let pbox = sample_person_box(rng, size, s);
    if !inside(pbox, size) {
        return None;
    }
    let mut sides_used = [0u32; 2];
    let mut objects: Vec<Object> = Vec::new();
    let mut rels = Vec::new();
    for &(rel, kind) in intents {
        let relbit = bit(rel);
        // Two holds / two next-tos go to opposite sides.
        let mut side = if rng.chance(0.5) { -1.0 } else { 1.0 };
        let si = usize::from(side > 0.0);
        if sides_used[si] & relbit != 0 {
            side = -side;
        }
        sides_used[usize::from(side > 0.0)] |= relbit;
        let bx = place_object(rng, pbox, relbit, kind, side, s);
        if !inside(bx, size) {
            return None;
        }
        objects.push(Object {
            kind,
            bx,
            style: rng.next_u64(),
            flip: rng.chance(0.5),
        });
        rels.push(implied_relations(relbit));
    }
    let cand = Candidate {
        person: Person {
            bx: pbox,
            style: rng.next_u64(),
        },
        objects,
        rels,
    };
    valid_candidate(scene, &cand).then_some(cand)
}

fn valid_candidate(scene: &Scene, c: &Candidate) -> bool {
    let pb = c.person.bx;
    // Persons apart from each other.
    if scene.persons.iter().any(|p| overlaps(p.bx, pb, 4)) {
        return false;
    }
    // New objects: no overlap with any object, old or new.
    for (i, o) in c.objects.iter().enumerate() {
        if scene.objects.iter().any(|q| overlaps(q.bx, o.bx, 2))
            || c.objects[..i].iter().any(|q| overlaps(q.bx, o.bx, 2))
        {
            return false;
        }
    }
    // Intended pairs: exactly the intended relations.
    for (o, &want) in c.objects.iter().zip(&c.rels) {
        if relation_mask(to_f64(pb), to_f64(o.bx), false) != want {
            return false;
        }
    }
    // Everything else unrelated, with margin.
    let unrelated = |p: IBox, o: IBox| relation_mask(to_f64(p), to_f64(o), true) == 0;
    scene.objects.iter().all(|o| unrelated(pb, o.bx))
        && scene
            .persons
            .iter()
            .all(|p| c.objects.iter().all(|o| unrelated(p.bx, o.bx)))
}

/// Adds a person with `intents` (dropping trailing intents that do not fit); false if even the
/// first intent could not be placed in `tries` attempts.
fn add_person(
    rng: &mut Rng,
    scene: &mut Scene,
    intents: &[(usize, usize)],
    s: f64,
    tries: usize,
) -> bool {
    for n in (1..=intents.len()).rev() {
        for _ in 0..tries {
            if let Some(c) = try_candidate(rng, scene, &intents[..n], s) {
                let pi = scene.persons.len();
                scene.persons.push(c.person);
                for (o, rels) in c.objects.into_iter().zip(c.rels) {
                    scene.pairs.push(Pair {
                        person: pi,
                        object: scene.objects.len(),
                        rels,
                    });
                    scene.objects.push(o);
                }
                return true;
            }
        }
    }
    false
}

fn add_distractor(rng: &mut Rng, scene: &mut Scene, s: f64) {
    for _ in 0..30 {
        let kind = 1 + rng.below(NUM_OBJECTS - 1);
        let (w, h) = object_size(rng, kind, s);
        let size = f64::from(scene.size);
        let bx = ibox(
            rng.range(1.0, size - w - 1.0),
            rng.range(1.0, size - h - 1.0),
            w,
            h,
        );
        if !inside(bx, scene.size)
            || scene.objects.iter().any(|o| overlaps(o.bx, bx, 3))
            || scene
                .persons
                .iter()
                .any(|p| relation_mask(to_f64(p.bx), to_f64(bx), true) != 0)
        {
            continue;
        }
        scene.objects.push(Object {
            kind,
            bx,
            style: rng.next_u64(),
            flip: rng.chance(0.5),
        });
        return;
    }
}

/// Samples an intent from the common combinations: relation uniform, then object uniform.
fn common_intent(rng: &mut Rng) -> (usize, usize) {
    let rel = rng.below(super::NUM_PRIMARY);
    let objs = super::common_objects(rel);
    (rel, rng.pick(&objs))
}

/// Lays out one image; `forced` (relation, object) is the first intent of the first person.
pub(crate) fn sample_scene(rng: &mut Rng, size: i32, forced: Option<(usize, usize)>) -> Scene {
    let s = f64::from(size) / 128.0;
    let mut scene = Scene {
        size,
        persons: Vec::new(),
        objects: Vec::new(),
        pairs: Vec::new(),
        background: rng.next_u64(),
    };
    let n_persons = if rng.chance(0.45) { 2 } else { 1 };
    let mut budget = 3usize;
    for pi in 0..n_persons {
        let n_rel = if budget >= 2 && rng.chance(0.4) { 2 } else { 1 };
        let mut intents: Vec<(usize, usize)> = Vec::new();
        if pi == 0
            && let Some(f) = forced
        {
            intents.push(f);
        }
        while intents.len() < n_rel {
            let it = common_intent(rng);
            // At most one of each relation per person, except hold / next to (two sides).
            let dup = intents.iter().any(|&(r, _)| r == it.0);
            if dup && !(it.0 == super::REL_HOLD || it.0 == super::REL_NEXT_TO) {
                continue;
            }
            intents.push(it);
        }
        let tries = if pi == 0 { 400 } else { 60 };
        if add_person(rng, &mut scene, &intents, s, tries) {
            budget = budget.saturating_sub(
                scene
                    .pairs
                    .iter()
                    .filter(|p| p.person == scene.persons.len() - 1)
                    .count(),
            );
        } else if pi == 0 {
            // Practically unreachable; retry with a fresh, easier intent list.
            let easy = [forced.unwrap_or((super::REL_NEXT_TO, super::BOX))];
            let ok = add_person(rng, &mut scene, &easy, s, 4000);
            assert!(ok, "synthetic scene: cannot place a person");
        }
        if budget == 0 {
            break;
        }
    }
    let n_distractors = match rng.below(10) {
        0..=2 => 0,
        3..=7 => 1,
        _ => 2,
    };
    for _ in 0..n_distractors {
        add_distractor(rng, &mut scene, s);
    }
    scene
}
