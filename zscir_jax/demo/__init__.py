"""Preparation stages of the embedded demos: what a run needs that no download can give offline."""
