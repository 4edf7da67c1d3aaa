# Hydra instantiates launchers only from the `hydra_plugins` namespace package
# (hydra.core.plugins.Plugins._instantiate), so the sweep launchers live here, not in src/.
