from otel_gpu.cli import main

raise SystemExit(main())
