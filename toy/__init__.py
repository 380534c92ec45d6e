"""The paper's motivating toy study (Fig. 1): two moons, few labels, a four-layer MLP."""
