//! The services: network stack set-up, HTTP on 80, echo on 7.
