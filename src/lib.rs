pub mod broker;
#[doc(hidden)]
pub mod fuzzing;
pub mod proto;
pub mod table;
