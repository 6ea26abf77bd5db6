//! The V-COCO release → HOIA conversion on a hand-made miniature release, and the `prior.pickle`
//! reader on pickles written by numpy (Python 2 protocols 0 and 2, Python 3 protocol 4).

use std::path::{Path, PathBuf};

use rlip_data::DataError;
use rlip_data::hico::load_hoi_annotations;
use rlip_data::npy::read_npy;
use rlip_data::vcoco::VCOCO_VERB_CLASSES;
use rlip_data::vcoco_convert::{
    CORRE_FILE, TEST_FILE, TRAINVAL_FILE, VcocoRelease, convert, corre_from_prior, load_prior,
};
use serde_json::{Value, json};

/// The 26 V-COCO actions with their non-agent roles, in release order.
const ACTIONS: [(&str, &[&str]); 26] = [
    ("hold", &["obj"]),
    ("stand", &[]),
    ("sit", &["instr"]),
    ("ride", &["instr"]),
    ("walk", &[]),
    ("look", &["obj"]),
    ("hit", &["instr", "obj"]),
    ("eat", &["obj", "instr"]),
    ("jump", &["instr"]),
    ("lay", &["instr"]),
    ("talk_on_phone", &["instr"]),
    ("carry", &["obj"]),
    ("throw", &["obj"]),
    ("catch", &["obj"]),
    ("cut", &["instr", "obj"]),
    ("run", &[]),
    ("work_on_computer", &["instr"]),
    ("ski", &["instr"]),
    ("surf", &["instr"]),
    ("skateboard", &["instr"]),
    ("smile", &[]),
    ("drink", &["instr"]),
    ("kick", &["obj"]),
    ("point", &["instr"]),
    ("read", &["obj"]),
    ("snowboard", &["instr"]),
];

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rlip-vcoco-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One split file: `entries` are `(image_id, person ann_id)`; `positives` are
/// `(action, entry, role objects)`; role-major `role_object_id` as in the release.
fn split(entries: &[(i64, i64)], positives: &[(&str, usize, &[i64])]) -> Value {
    let actions: Vec<Value> = ACTIONS
        .iter()
        .map(|(name, roles)| {
            let n = entries.len();
            let k = roles.len() + 1;
            let mut label = vec![0; n];
            let mut roid = vec![0i64; k * n];
            for (m, e) in entries.iter().enumerate() {
                roid[m] = e.1;
            }
            for (a, m, objs) in positives {
                if a == name {
                    label[*m] = 1;
                    for (r, o) in objs.iter().enumerate() {
                        roid[(r + 1) * n + m] = *o;
                    }
                }
            }
            let role_name: Vec<&str> = std::iter::once("agent")
                .chain(roles.iter().copied())
                .collect();
            json!({
                "image_id": entries.iter().map(|e| e.0).collect::<Vec<_>>(),
                "ann_id": entries.iter().map(|e| e.1).collect::<Vec<_>>(),
                "role_object_id": roid,
                "label": label,
                "action_name": name,
                "role_name": role_name,
                "include": vec![Vec::<String>::new(); k],
            })
        })
        .collect();
    Value::Array(actions)
}

fn ann(id: i64, image_id: i64, category_id: i64, bbox: [f64; 4]) -> Value {
    json!({"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
           "area": bbox[2] * bbox[3], "iscrowd": 0})
}

/// A miniature release under `root` in the README layout.
fn release(root: &Path, trainval: &Value) {
    let instances = json!({
        "images": [
            {"id": 1, "width": 100, "height": 80, "file_name": "COCO_train2014_000000000001.jpg"},
            {"id": 2, "width": 100, "height": 80, "file_name": "COCO_train2014_000000000002.jpg"},
            {"id": 3, "width": 100, "height": 80, "file_name": "COCO_val2014_000000000003.jpg"},
        ],
        "annotations": [
            ann(21, 2, 1, [1.0, 2.0, 10.0, 20.0]),
            ann(11, 1, 1, [5.0, 5.0, 30.0, 40.0]),
            ann(12, 1, 37, [40.0, 10.0, 5.5, 5.5]),
            ann(13, 1, 43, [30.0, 20.0, 10.0, 4.0]),
            ann(22, 2, 1, [50.0, 2.0, 10.0, 20.0]),
            ann(99, 7, 1, [0.0, 0.0, 1.0, 1.0]),
            ann(31, 3, 1, [0.0, 0.0, 20.0, 20.0]),
            ann(32, 3, 84, [20.0, 20.0, 5.0, 5.0]),
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 37, "name": "sports ball"},
                       {"id": 43, "name": "tennis racket"}, {"id": 84, "name": "book"}],
    });
    let test = split(&[(3, 31)], &[("read", 0, &[32]), ("smile", 0, &[])]);
    std::fs::create_dir_all(root.join("data/vcoco")).unwrap();
    let w = |p: &str, v: &Value| std::fs::write(root.join(p), v.to_string()).unwrap();
    w("data/instances_vcoco_all_2014.json", &instances);
    w("data/vcoco/vcoco_trainval.json", trainval);
    w("data/vcoco/vcoco_test.json", &test);
}

fn good_trainval() -> Value {
    split(
        &[(1, 11), (2, 21), (2, 22)],
        &[
            ("hit", 0, &[13, 12]),
            ("eat", 0, &[12, 0]),
            ("stand", 1, &[]),
            ("look", 2, &[0]),
        ],
    )
}

/// Protocol-2 pickle bytes of `{key: float64 array [rows, cols]}` exactly as numpy (1.x) and
/// Python 2's `pickle.dumps(d, 2)` write them (checked against real output below).
fn numpy_pickle_p2(entries: &[(i64, usize, usize, Vec<f64>)]) -> Vec<u8> {
    let mut out = b"\x80\x02}q\x00(".to_vec();
    let mut memo = 0u32;
    let mut put = |out: &mut Vec<u8>| {
        memo += 1;
        if memo < 256 {
            out.extend([b'q', memo as u8]);
        } else {
            out.push(b'r');
            out.extend(memo.to_le_bytes());
        }
        memo
    };
    let get = |out: &mut Vec<u8>, id: u32| {
        if id < 256 {
            out.extend([b'h', id as u8]);
        } else {
            out.push(b'j');
            out.extend(id.to_le_bytes());
        }
    };
    let int = |out: &mut Vec<u8>, v: i64| match v {
        0..=255 => out.extend([b'K', v as u8]),
        256..=65535 => out.extend([b'M', v as u8, (v >> 8) as u8]),
        _ => {
            out.push(b'J');
            out.extend((v as i32).to_le_bytes());
        }
    };
    let mut ids: Option<(u32, u32, u32, u32)> = None; // _reconstruct, ndarray, b'b', dtype
    for (key, rows, cols, data) in entries {
        int(&mut out, *key);
        let (rec, nd, b, dt) = match ids {
            None => {
                out.extend(b"cnumpy.core.multiarray\n_reconstruct\n");
                let rec = put(&mut out);
                out.extend(b"cnumpy\nndarray\n");
                let nd = put(&mut out);
                out.extend(b"K\x00\x85");
                put(&mut out);
                out.extend(b"U\x01b");
                let b = put(&mut out);
                (rec, nd, b, None)
            }
            Some((rec, nd, b, dt)) => {
                get(&mut out, rec);
                get(&mut out, nd);
                out.extend(b"K\x00\x85");
                put(&mut out);
                get(&mut out, b);
                (rec, nd, b, Some(dt))
            }
        };
        out.push(0x87);
        put(&mut out);
        out.extend(b"R");
        put(&mut out);
        out.extend(b"(K\x01");
        int(&mut out, *rows as i64);
        int(&mut out, *cols as i64);
        out.push(0x86);
        put(&mut out);
        let dt = match dt {
            Some(dt) => {
                get(&mut out, dt);
                dt
            }
            None => {
                out.extend(b"cnumpy\ndtype\n");
                put(&mut out);
                out.extend(b"U\x02f8");
                put(&mut out);
                out.extend(b"K\x00K\x01\x87");
                put(&mut out);
                out.push(b'R');
                let dt = put(&mut out);
                out.extend(b"(K\x03U\x01<");
                put(&mut out);
                out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t");
                put(&mut out);
                out.push(b'b');
                dt
            }
        };
        ids = Some((rec, nd, b, dt));
        out.push(0x89);
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        if raw.len() < 256 {
            out.extend([b'U', raw.len() as u8]);
        } else {
            out.push(b'T');
            out.extend((raw.len() as u32).to_le_bytes());
        }
        out.extend(raw);
        put(&mut out);
        out.push(b't');
        put(&mut out);
        out.push(b'b');
    }
    out.extend(b"u.");
    out
}

/// `pickle.dumps({2: a2, 0: a0, 1: a1}, p)` in Python 2.7 with numpy 1.16, where `a_k` is
/// `np.ones((1, 3))` with `a_k[0, k] = 0.5 * k`.
const PY2_P0: &[u8] = b"(dp0\nI0\ncnumpy.core.multiarray\n_reconstruct\np1\n(cnumpy\nndarray\np2\n(I0\ntp3\nS'b'\np4\ntp5\nRp6\n(I1\n(I1\nI3\ntp7\ncnumpy\ndtype\np8\n(S'f8'\np9\nI0\nI1\ntp10\nRp11\n(I3\nS'<'\np12\nNNNI-1\nI-1\nI0\ntp13\nbI00\nS'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\xf0?\\x00\\x00\\x00\\x00\\x00\\x00\\xf0?'\np14\ntp15\nbsI1\ng1\n(g2\n(I0\ntp16\ng4\ntp17\nRp18\n(I1\n(I1\nI3\ntp19\ng11\nI00\nS'\\x00\\x00\\x00\\x00\\x00\\x00\\xf0?\\x00\\x00\\x00\\x00\\x00\\x00\\xe0?\\x00\\x00\\x00\\x00\\x00\\x00\\xf0?'\np20\ntp21\nbsI2\ng1\n(g2\n(I0\ntp22\ng4\ntp23\nRp24\n(I1\n(I1\nI3\ntp25\ng11\nI00\nS'\\x00\\x00\\x00\\x00\\x00\\x00\\xf0?\\x00\\x00\\x00\\x00\\x00\\x00\\xf0?\\x00\\x00\\x00\\x00\\x00\\x00\\xf0?'\np26\ntp27\nbs.";
const PY2_P2: &[u8] = b"\x80\x02}q\x00(K\x00cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85q\x03U\x01bq\x04\x87q\x05Rq\x06(K\x01K\x01K\x03\x86q\x07cnumpy\ndtype\nq\x08U\x02f8q\x09K\x00K\x01\x87q\nRq\x0b(K\x03U\x01<q\x0cNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0db\x89U\x18\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00\x00\xf0?q\x0etq\x0fbK\x01h\x01h\x02K\x00\x85q\x10h\x04\x87q\x11Rq\x12(K\x01K\x01K\x03\x86q\x13h\x0b\x89U\x18\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00\x00\xe0?\x00\x00\x00\x00\x00\x00\xf0?q\x14tq\x15bK\x02h\x01h\x02K\x00\x85q\x16h\x04\x87q\x17Rq\x18(K\x01K\x01K\x03\x86q\x19h\x0b\x89U\x18\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00\x00\xf0?q\x1atq\x1bbu.";
/// `pickle.dumps({1: np.array([[1.0, 0.0]]), 0: np.array([[0.25, 1.0]], dtype=np.float32)}, 4)`
/// in Python 3.11 with numpy 2.4.
const PY3_P4: &[u8] = b"\x80\x04\x95\xed\x00\x00\x00\x00\x00\x00\x00}\x94(K\x01\x8c\x16numpy._core.multiarray\x94\x8c\x0c_reconstruct\x94\x93\x94\x8c\x05numpy\x94\x8c\x07ndarray\x94\x93\x94K\x00\x85\x94C\x01b\x94\x87\x94R\x94(K\x01K\x01K\x02\x86\x94h\x04\x8c\x05dtype\x94\x93\x94\x8c\x02f8\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01<\x94NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x94b\x89C\x10\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00\x00\x00\x00\x94t\x94bK\x00h\x03h\x06K\x00\x85\x94h\x08\x87\x94R\x94(K\x01K\x01K\x02\x86\x94h\x0d\x8c\x02f4\x94\x89\x88\x87\x94R\x94(K\x03h\x11NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x94b\x89C\x08\x00\x00\x80>\x00\x00\x80?\x94t\x94bu.";

#[test]
fn prior_pickles_written_by_numpy_are_read() {
    let dir = tmp("prior");
    // keys sorted: a0 = [0, 1, 1], a1 = [1, .5, 1], a2 = [1, 1, 1]
    let want = vec![0.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0];
    for (name, bytes) in [("p0", PY2_P0), ("p2", PY2_P2)] {
        let p = dir.join(format!("{name}.pickle"));
        std::fs::write(&p, bytes).unwrap();
        let m = load_prior(&p).unwrap();
        assert_eq!((m.rows, m.cols), (3, 3), "{name}");
        assert_eq!(m.data, want, "{name}");
    }
    let p = dir.join("p4.pickle");
    std::fs::write(&p, PY3_P4).unwrap();
    let m = load_prior(&p).unwrap();
    assert_eq!((m.rows, m.cols, m.data), (2, 2, vec![0.25, 1.0, 1.0, 0.0]));
    // The test helper writes what numpy writes.
    let e = |k: i64| {
        let mut v = vec![1.0; 3];
        v[k as usize] = 0.5 * k as f64;
        (k, 1, 3, v)
    };
    assert_eq!(numpy_pickle_p2(&[e(0), e(1), e(2)]), PY2_P2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn prior_pickles_that_call_code_or_are_malformed_are_refused() {
    let dir = tmp("prior-bad");
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "os",
            b"\x80\x02cos\nsystem\nq\x00U\x02lsq\x01\x85q\x02Rq\x03.",
            "refusing to call os.system",
        ),
        ("list", b"\x80\x02]q\x00.", "not a dict"),
        ("trunc", &PY2_P2[..PY2_P2.len() / 2], "truncated"),
        ("key", b"\x80\x02}q\x00(U\x01aK\x01u.", "key"),
        ("empty", b"\x80\x02}q\x00.", "empty"),
    ];
    for (name, bytes, needle) in cases {
        let p = dir.join(format!("{name}.pickle"));
        std::fs::write(&p, bytes).unwrap();
        let e = load_prior(&p).unwrap_err().to_string();
        assert!(
            e.contains(&*p.to_string_lossy()) && e.contains(needle),
            "{name}: {e}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn conversion_follows_the_official_script() {
    let root = tmp("convert");
    release(&root, &good_trainval());
    // prior: 3 object classes x 29 verbs (VSGNet order), value = 100 * class + column
    let prior: Vec<(i64, usize, usize, Vec<f64>)> = (0..3)
        .rev()
        .map(|k| (k, 1, 29, (0..29).map(|c| (100 * k + c) as f64).collect()))
        .collect();
    std::fs::write(root.join("prior.pickle"), numpy_pickle_p2(&prior)).unwrap();
    let rel = VcocoRelease::in_root(&root);
    assert!(rel.prior.is_some());
    let out = root.join("annotations");
    let r = convert(&rel, &out).unwrap();
    assert_eq!(
        r.verb_classes,
        VCOCO_VERB_CLASSES.map(String::from).to_vec()
    );
    assert_eq!(
        (r.trainval, r.test, r.corre_shape),
        ((2, 6), (1, 2), Some([29, 3]))
    );

    let tv: Value =
        serde_json::from_slice(&std::fs::read(out.join(TRAINVAL_FILE)).unwrap()).unwrap();
    let v = |n: &str| VCOCO_VERB_CLASSES.iter().position(|c| *c == n).unwrap();
    let hoi = |s: i64, o: i64, c: usize| json!({"subject_id": s, "object_id": o, "category_id": c});
    let want = json!([
        {"file_name": "COCO_train2014_000000000001.jpg",
         "annotations": [
            {"bbox": [5.0, 5.0, 35.0, 45.0], "category_id": 1},
            {"bbox": [40.0, 10.0, 45.5, 15.5], "category_id": 37},
            {"bbox": [30.0, 20.0, 40.0, 24.0], "category_id": 43}],
         "hoi_annotation": [hoi(0, 2, v("hit_instr")), hoi(0, 1, v("hit_obj")),
                            hoi(0, 1, v("eat_obj")), hoi(0, -1, v("eat_instr"))]},
        {"file_name": "COCO_train2014_000000000002.jpg",
         "annotations": [
            {"bbox": [1.0, 2.0, 11.0, 22.0], "category_id": 1},
            {"bbox": [50.0, 2.0, 60.0, 22.0], "category_id": 1}],
         "hoi_annotation": [hoi(0, -1, v("stand")), hoi(1, -1, v("look_obj"))]},
    ]);
    // hit (index 6) comes before eat (7) and stand (1) is an agent-only class: rows follow the
    // action order of the file, so "stand" of image 2 precedes "look" of the same image.
    assert_eq!(tv, want);
    let te: Value = serde_json::from_slice(&std::fs::read(out.join(TEST_FILE)).unwrap()).unwrap();
    assert_eq!(
        te[0]["hoi_annotation"],
        json!([hoi(0, -1, v("smile")), hoi(0, 1, v("read_obj"))])
    );
    // Our HOIA reader accepts both files.
    assert_eq!(
        load_hoi_annotations(out.join(TRAINVAL_FILE)).unwrap().len(),
        2
    );
    assert_eq!(load_hoi_annotations(out.join(TEST_FILE)).unwrap().len(), 1);

    let corre = read_npy(out.join(CORRE_FILE)).unwrap();
    assert_eq!(corre.shape, vec![29, 3]);
    let c = corre.to_f64_vec();
    let mut vsg = VCOCO_VERB_CLASSES.to_vec();
    vsg.sort_unstable();
    for (i, verb) in VCOCO_VERB_CLASSES.iter().enumerate() {
        let col = vsg.iter().position(|n| n == verb).unwrap() as f64;
        assert_eq!(
            &c[i * 3..i * 3 + 3],
            &[col, 100.0 + col, 200.0 + col],
            "{verb}"
        );
    }
    assert_eq!(
        c[0], 9.0,
        "hold_obj is column 9 of VSGNet's alphabetical order"
    );

    // Never overwrite: a second run fails on the first existing file and changes nothing.
    let before = std::fs::read(out.join(TRAINVAL_FILE)).unwrap();
    match convert(&rel, &out) {
        Err(DataError::Write { path, source }) => {
            assert_eq!(path, out.join(TRAINVAL_FILE));
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(std::fs::read(out.join(TRAINVAL_FILE)).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 3, "{leftovers:?}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn conversion_without_prior_writes_only_the_lists() {
    let root = tmp("noprior");
    release(&root, &good_trainval());
    let out = root.join("annotations");
    let r = convert(&VcocoRelease::in_root(&root), &out).unwrap();
    assert_eq!(r.corre_shape, None);
    assert!(out.join(TRAINVAL_FILE).exists() && !out.join(CORRE_FILE).exists());
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn conversion_errors_name_file_action_entry_and_field() {
    let cases: [(&str, Value, &str); 3] = [
        (
            "unknown-object",
            split(&[(1, 11)], &[("hold", 0, &[32])]),
            "action \"hold\", entry 0 (image_id 1): role_object_id (obj): annotation id 32",
        ),
        (
            "unknown-agent",
            split(&[(1, 21)], &[("walk", 0, &[])]),
            "role_object_id (agent): annotation id 21",
        ),
        (
            "unknown-image",
            split(&[(5, 11)], &[]),
            "entry 0 (image_id 5): image_id: not an image",
        ),
    ];
    for (name, trainval, needle) in cases {
        let root = tmp(name);
        release(&root, &trainval);
        let out = root.join("annotations");
        let e = convert(&VcocoRelease::in_root(&root), &out)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vcoco_trainval.json") && e.contains(needle),
            "{name}: {e}"
        );
        assert!(!out.exists(), "{name}: nothing may be written on error");
        std::fs::remove_dir_all(&root).ok();
    }
    // A verb class the prior does not know.
    let prior = rlip_data::vcoco_convert::PriorMatrix {
        rows: 1,
        cols: 29,
        data: vec![0.0; 29],
    };
    let e = corre_from_prior(&prior, &["fly_instr".to_string()]).unwrap_err();
    assert!(e.contains("fly_instr"), "{e}");
}
