"""intentd-train: make data, import backbones, fine-tune, evaluate and run speech-intent classifiers."""
