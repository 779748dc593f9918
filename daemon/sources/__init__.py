"""Audio sources: socket ingest, file replay and microphone, each feeding a StreamSink."""
