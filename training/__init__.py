"""Training stage: synthetic chest-CT phantoms, DICOM series writer, network, training and export."""
