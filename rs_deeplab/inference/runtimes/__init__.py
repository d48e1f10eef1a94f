"""What runs the model: checkpoints and exports loaded, the runtime chosen, exports written, cached, quantized."""
