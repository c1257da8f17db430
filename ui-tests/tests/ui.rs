//! "Compile-time checks": every U rule has a case. Each `fail/*.stderr` was read before it was committed: the
//! message must tell the user what to change.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("pass/*.rs");
    cases.compile_fail("fail/*.rs");
}
