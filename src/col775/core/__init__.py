"""What every study shares: configs, run folders, training helpers, plots and reports. Imports no study."""
