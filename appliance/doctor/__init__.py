"""`appliance doctor`: does this host have what `appliance serve` needs? `checks` judges (pure), `facts` looks."""
