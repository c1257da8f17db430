//! "structs with named fields" (generics kept) and hygiene: user code that shadows `Option`, `Result`, `Default`,
//! `String` and `serde` does not break the generated code.
#![allow(dead_code)]

mod shadowing {
    pub struct Option;
    pub struct Result;
    pub struct Default;
    pub struct String;
    pub mod serde {}
}

mod sessions {
    use super::shadowing::*;
    use typed_session::Session;

    #[derive(Session)]
    pub struct Shadowed {
        #[default(7)]
        pub n: u32,
        pub name: std::string::String,
    }

    #[derive(Session)]
    pub struct Wrapper<T> {
        pub value: T,
        #[default(1)]
        pub version: u8,
    }
}

#[derive(serde::Serialize, serde::Deserialize, Default, Clone, PartialEq, Debug)]
struct Point {
    x: i32,
    y: i32,
}

fn main() {
    assert_eq!(sessions::Shadowed::default().n, 7);
    let w = sessions::Wrapper::<Point>::default();
    assert_eq!((w.value, w.version), (Point::default(), 1));
}
