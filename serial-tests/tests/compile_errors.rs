//! Bad attribute input is a compile error that names the mistake (trybuild; the expected
//! messages are the `.stderr` files beside the cases in `tests/ui/`).

#[test]
fn bad_attribute_input_names_the_mistake() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
