//! Where runs show up besides their own folder: the trackers people already look at.

pub mod mlflow;
pub mod tensorboard;
