//! Helpers shared by the integration tests: the real binary as a child process (`server`),
//! a fresh database per test (`db`), an HTTP API client and free ports (`api`), users and
//! sign-in (`accounts`), a server's metrics (`metrics`), an OTLP/HTTP trace collector
//! (`otlp`), what the vendor-client tests share (`vendor`), and waiting for a condition
//! (`wait`).
#![allow(dead_code)]

pub mod accounts;
pub mod api;
pub mod db;
pub mod metrics;
pub mod otlp;
pub mod server;
pub mod vendor;
pub mod wait;
