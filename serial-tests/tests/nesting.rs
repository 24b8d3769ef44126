//! A test never waits for itself: nested takes of keys it holds proceed, across function
//! boundaries and for `serial_many`; a serial take inside a parallel one of the same key fails
//! at once; other threads are other tests.

use live_mutex::client::{Error, parallel_many, serial_many};
use live_mutex::{parallel, serial};
use live_mutex_serial_tests::{free, held_exclusively_elsewhere, held_shared_elsewhere, visit};

const DIR: &str = env!("CARGO_TARGET_TMPDIR");

#[serial(st_nest)]
fn helper_taking_the_same_key() -> &'static str {
    "helper ran"
}

#[serial(st_nest)]
fn helper_nesting_twice() -> &'static str {
    helper_taking_the_same_key()
}

#[serial(st_nest)]
#[test]
fn nested_attribute_across_functions_finishes() {
    assert_eq!(helper_nesting_twice(), "helper ran");
    visit(DIR, &["st_nest"], false, "nesting::across_functions");
    assert!(
        held_exclusively_elsewhere("st_nest"),
        "still held after the helpers returned"
    );
}

#[test]
fn nested_function_form_finishes_and_counts() {
    let outer = serial("st_nest").unwrap();
    let inner = serial("st_nest").unwrap();
    visit(DIR, &["st_nest"], false, "nesting::function_form");
    drop(outer);
    // The inner take still holds the key.
    assert!(held_exclusively_elsewhere("st_nest"));
    drop(inner);
}

/// A key of its own, so that "free" after the test's guards drop is not another test's hold.
#[test]
fn serial_many_counts_the_keys_already_held() {
    let a = serial("st_nest_many_a").unwrap();
    let both = serial_many(&["st_nest_many_b", "st_nest_many_a"]).unwrap();
    assert_eq!(both.keys(), ["st_nest_many_a", "st_nest_many_b"]);
    drop(a);
    assert!(
        held_exclusively_elsewhere("st_nest_many_a"),
        "serial_many still holds it"
    );
    assert!(held_exclusively_elsewhere("st_nest_many_b"));
    drop(both);
    assert!(free("st_nest_many_a") && free("st_nest_many_b"));
}

#[serial(st_nest_attr_many)]
#[test]
fn serial_many_inside_the_attribute() {
    let g = serial_many(&["st_nest_attr_many", "st_nest_attr_many_2"]).unwrap();
    drop(g);
    assert!(
        held_exclusively_elsewhere("st_nest_attr_many"),
        "the attribute's hold remains"
    );
}

#[serial(st_nest_mixed)]
#[test]
fn parallel_inside_serial_proceeds() {
    let r = parallel("st_nest_mixed").unwrap();
    let rs = parallel_many(&["st_nest_mixed"]).unwrap();
    drop((r, rs));
    assert!(held_exclusively_elsewhere("st_nest_mixed"));
}

#[parallel(st_nest_mixed)]
#[test]
fn serial_inside_parallel_is_an_immediate_error() {
    match serial("st_nest_mixed") {
        Err(Error::Serial(m)) => assert!(m.contains("would wait for itself"), "{m}"),
        other => panic!("expected the nesting error, got {other:?}"),
    }
    match serial_many(&["st_nest_other", "st_nest_mixed"]) {
        Err(Error::Serial(m)) => assert!(m.contains("st_nest_mixed"), "{m}"),
        other => panic!("expected the nesting error, got {other:?}"),
    }
    // Nothing was taken on the way: the other key is not held by this test.
    assert!(!held_exclusively_elsewhere("st_nest_other"));
    assert!(held_shared_elsewhere("st_nest_mixed"));
}

#[serial(st_nest_mixed)]
fn serial_helper() {}

#[should_panic(expected = "would wait for itself")]
#[parallel(st_nest_mixed)]
#[test]
fn serial_attribute_inside_parallel_fails_the_test_at_once() {
    serial_helper();
}

#[parallel(st_nest_par)]
fn parallel_helper() -> bool {
    held_shared_elsewhere("st_nest_par")
}

#[parallel(st_nest_par)]
#[test]
fn parallel_inside_parallel_proceeds() {
    assert!(parallel_helper());
}

/// A thread the test starts is a test of its own: it waits for the test's key (here it gives
/// up after its time-out, naming this process as the holder) instead of sharing it.
#[serial(st_nest_thread)]
#[test]
fn another_thread_is_another_test() {
    #[serial(st_nest_thread, timeout = "1s")]
    fn from_another_thread() {}
    let r = std::thread::spawn(from_another_thread).join();
    let msg = match r {
        Ok(()) => panic!("the thread took a key this test holds"),
        Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(msg.contains("timed out after 1.0 s"), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
}
