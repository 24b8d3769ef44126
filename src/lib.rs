pub mod proto;
pub mod table;
