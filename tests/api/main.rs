//! The integration suite: a real PostgreSQL, real servers on port 0 and real
//! WebSocket clients (see `helpers`), one module per area of the product.
//! One binary, so the helpers and the server compile once and the suite
//! shares one PostgreSQL cluster.

mod helpers;

mod admission;
mod auth;
mod blocking;
mod caps;
mod chats;
mod cli;
mod container;
mod contract;
mod errors;
mod failover;
mod hostile_input;
mod mentions;
mod messages;
mod ops;
mod outage;
mod pins;
mod presence;
mod races;
mod rate_limits;
mod reactions;
mod redaction;
mod replay_agreement;
mod replay_cost;
mod replies;
mod revocation;
mod search;
mod seed_client;
mod send_batches;
mod slow_clients;
mod smoke;
mod users;
mod web;
mod ws_connect_race;
mod ws_delivery;
mod ws_guarantees;
mod ws_multinode;
mod ws_protocol;
