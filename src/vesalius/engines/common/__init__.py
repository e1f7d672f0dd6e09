"""What every task engine shares: fingerprint, plan, model package, training loop, inference, metrics."""
