//! Session tests: the receiver session's states and refusals one by one, the batch
//! receiver's checks, the sender's answer matching, and a [`pair::Pair`] running a sender and
//! a receiver session against each other in memory — every frame crossing as bytes through
//! the real codecs — over a model store.

mod disk_set;
mod extent_hashing;
mod hostile;
mod model;
mod pair;
mod pair_disk;
mod pair_tests;
mod points;
mod progress_pages;
mod receiver_batch;
mod receiver_control;
mod receiver_limits;
mod receiver_refusals;
mod receiver_timer;
mod sender;
mod sender_disk;
