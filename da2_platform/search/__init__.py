"""DA2, the differentiable augmentation search of the P2Net paper, and the search jobs that run on Ray Tune."""
