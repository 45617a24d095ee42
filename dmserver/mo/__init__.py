"""Management objects: tree paths, FUMO, DevInfo and DevDetail."""
