//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod api;
pub mod db;
pub mod server;
pub mod vendor;
