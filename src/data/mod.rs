//! The tool's own data: generated math word problems and answer extraction. (Text corpora are
//! fetched by scripts/setup-data; loading and tokenizing them is the trainer's.)

pub mod math;
