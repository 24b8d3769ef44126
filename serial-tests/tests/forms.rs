//! Every form of the attributes on plain test fns: no key, identifiers, strings, several keys,
//! `parallel`, `timeout`, a `mod`. Each test checks through marker files that nobody it must
//! exclude is inside with it (the same keys are used by the other test binaries, so this holds
//! across processes too).

use live_mutex::{parallel, serial};
use live_mutex_serial_tests::{held_exclusively_elsewhere, held_shared_elsewhere, visit};

const DIR: &str = env!("CARGO_TARGET_TMPDIR");

#[serial]
#[test]
fn no_key_is_the_default_key_a() {
    visit(DIR, &["default"], false, "forms::no_key_a");
    assert!(held_exclusively_elsewhere("live-mutex:default"));
}

#[serial]
#[test]
fn no_key_is_the_default_key_b() {
    visit(DIR, &["default"], false, "forms::no_key_b");
}

#[parallel]
#[test]
fn parallel_without_key_shares_the_default_key() {
    visit(DIR, &["default"], true, "forms::parallel_default");
    assert!(held_shared_elsewhere("live-mutex:default"));
}

#[serial(st_db)]
#[test]
fn identifier_key() {
    visit(DIR, &["st_db"], false, "forms::identifier_key");
    assert!(held_exclusively_elsewhere("st_db"));
}

#[serial("st_db")]
#[test]
fn string_key_is_the_same_key() {
    visit(DIR, &["st_db"], false, "forms::string_key");
}

#[serial(st_db, st_cache)]
#[test]
fn two_identifiers() {
    visit(DIR, &["st_db", "st_cache"], false, "forms::two_identifiers");
    assert!(held_exclusively_elsewhere("st_db") && held_exclusively_elsewhere("st_cache"));
}

// The same keys in the other order and mixed forms: taken in one order, so no deadlock.
#[serial("st_cache", st_db)]
#[test]
fn mixed_forms_other_order() {
    visit(DIR, &["st_cache", "st_db"], false, "forms::mixed_forms");
}

#[serial(st_cache)]
#[test]
fn returning_a_result() -> Result<(), String> {
    visit(DIR, &["st_cache"], false, "forms::returning_a_result");
    Ok(())
}

#[parallel(st_db)]
#[test]
fn parallel_reader_one() {
    visit(DIR, &["st_db"], true, "forms::parallel_reader_one");
    assert!(held_shared_elsewhere("st_db"));
}

#[parallel("st_db")]
#[test]
fn parallel_reader_two() {
    visit(DIR, &["st_db"], true, "forms::parallel_reader_two");
}

#[parallel(st_db, st_cache)]
#[test]
fn parallel_on_two_keys() {
    visit(
        DIR,
        &["st_db", "st_cache"],
        true,
        "forms::parallel_two_keys",
    );
    assert!(held_shared_elsewhere("st_db") && held_shared_elsewhere("st_cache"));
}

#[serial(st_db, timeout = "120s")]
#[test]
fn with_a_timeout_not_reached() {
    visit(DIR, &["st_db"], false, "forms::with_a_timeout");
}

#[should_panic(expected = "inside")]
#[serial(st_cache)]
#[test]
fn a_panicking_test_gives_its_key_back() {
    visit(DIR, &["st_cache"], false, "forms::panicking");
    panic!("panicking inside st_cache on purpose");
}

/// Every test fn of the module holds `st_mod` exclusively, unless it says otherwise.
#[serial(st_mod)]
mod on_a_module {
    use super::*;

    #[test]
    fn first() {
        visit(DIR, &["st_mod"], false, "forms::on_a_module::first");
        assert!(held_exclusively_elsewhere("st_mod"));
    }

    #[test]
    fn second() {
        visit(DIR, &["st_mod"], false, "forms::on_a_module::second");
    }

    /// Its own attribute wins over the module's.
    #[parallel(st_mod)]
    #[test]
    fn own_attribute_wins() {
        visit(DIR, &["st_mod"], true, "forms::on_a_module::own");
        assert!(held_shared_elsewhere("st_mod"));
    }

    /// Not a test: left alone. (Were it wrapped in `serial(st_mod)`, calling it under
    /// `parallel(st_mod)` would fail at once: a serial take nested in a parallel one.)
    pub fn helper_is_not_wrapped() -> u32 {
        42
    }

    mod nested {
        use super::super::*;

        #[test]
        fn a_submodule_too() {
            visit(DIR, &["st_mod"], false, "forms::on_a_module::nested");
            assert!(held_exclusively_elsewhere("st_mod"));
        }
    }
}

#[parallel(st_mod)]
#[test]
fn a_non_test_fn_in_the_module_is_not_wrapped() {
    assert_eq!(on_a_module::helper_is_not_wrapped(), 42);
}

#[parallel(st_mod)]
mod parallel_on_a_module {
    use super::*;

    #[test]
    fn reader() {
        visit(
            DIR,
            &["st_mod"],
            true,
            "forms::parallel_on_a_module::reader",
        );
        assert!(held_shared_elsewhere("st_mod"));
    }
}

#[test]
fn the_function_forms() {
    {
        let _g = serial("st_db").unwrap();
        visit(DIR, &["st_db"], false, "forms::the_function_forms serial");
    }
    let _g = parallel("st_db").unwrap();
    visit(DIR, &["st_db"], true, "forms::the_function_forms parallel");
}
