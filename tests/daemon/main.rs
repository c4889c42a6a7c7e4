//! Integration tests: each starts the real daemon and talks to it over the wire.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod backend_node;
mod bench;
mod cli;
mod completions;
mod config_reference;
mod doctor;
mod durability;
mod faults;
mod floods;
mod flow;
mod guards;
mod harness;
mod hostile;
mod http_api;
mod http_client;
mod http_webhook;
mod metrics;
mod openapi;
mod operations;
mod package;
mod pg_cluster;
mod pg_migrate;
#[path = "../support/pg_server.rs"]
mod pg_server;
mod postgres;
mod postgres_faults;
mod progress;
mod reload;
mod restore_freshness;
mod retention;
mod reverse_proxy;
mod seal;
mod secrecy;
mod selftest;
mod slow_clients;
mod startup;
mod systemd;
mod unix_clients;
mod validation;
mod versions;
