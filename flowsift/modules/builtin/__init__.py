"""Built-in modules (found by name: `flowsift modules` lists them)."""
