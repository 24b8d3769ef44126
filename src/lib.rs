pub mod proto;
pub mod table;
pub mod broker;
