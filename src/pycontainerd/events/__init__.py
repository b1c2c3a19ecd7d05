"""Events: the exchange that carries containerd's topics between publishers and
subscribers."""
