pub mod broker;
pub mod proto;
pub mod table;
