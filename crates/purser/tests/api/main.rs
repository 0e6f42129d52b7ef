//! The one integration-test binary: drives the real server over HTTP (loopback sockets) against
//! real SQLite files and a real PostgreSQL schema per test. The only fake is the LLM upstream.

mod helpers;

mod foundation;
