//! Deepgram live speech-to-text (vendor-protocols.md section 2): work in progress.
