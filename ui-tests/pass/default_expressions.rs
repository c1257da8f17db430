//! "defaults": any expression is a default, built with only the facade's default features
//! (casts, blocks, closures called in place, method chains, struct literals, constants).
use std::collections::BTreeMap;
use typed_session::Session;

const LIMIT: u32 = 7;

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
struct Point {
    x: i32,
    y: i32,
}

#[derive(Session, Clone, Debug, PartialEq)]
struct Everything {
    #[default(i64::MAX as u64)]
    big: u64,
    #[default({ let base = 2; base * LIMIT })]
    block: u32,
    #[default((|| "from a closure".to_owned())())]
    closure: String,
    #[default("a,b".split(',').map(str::to_owned).collect())]
    chain: Vec<String>,
    #[default(Point { x: 1, y: -1 })]
    point: Point,
    #[default(if LIMIT > 5 { Some(LIMIT) } else { None })]
    conditional: Option<u32>,
    #[default(BTreeMap::from([(1, 2)]))]
    map: BTreeMap<u8, u8>,
}

fn main() {
    let e = Everything::default();
    assert_eq!(e.big, i64::MAX as u64);
    assert_eq!(e.block, 14);
    assert_eq!(e.closure, "from a closure");
    assert_eq!(e.chain, ["a", "b"]);
    assert_eq!(e.point, Point { x: 1, y: -1 });
    assert_eq!(e.conditional, Some(7));
    assert_eq!(e.map[&1], 2);
}
