//! Cartesia streaming text-to-speech (vendor-protocols.md section 3): work in progress.
