namespace Weft.Harness;

/// <summary>
/// How to start a Weft program of this build as a child process. The agent and CLI (<c>weft</c>), the
/// test kit (<c>weft-kit</c>: demo, peer app) and the benchmark (<c>weft-bench</c>) are separate
/// assemblies; the first argument says which: <c>app</c> and <c>demo</c> are the kit's, <c>bench</c> and
/// <c>bench-metrics</c> the benchmark's, everything else the agent's. A program runs as its apphost when
/// that is the current process, otherwise as <c>dotnet NAME.dll</c> from this build's output directory.
/// <see cref="OverrideVariable"/> (<c>WEFT_EXECUTABLE</c>) names another <c>weft</c> executable to run instead,
/// e.g. a NativeAOT publish, so the same tests run against it.
/// </summary>
internal static class WeftExecutable
{
    public const string Agent = "weft";
    public const string Kit = "weft-kit";
    public const string Bench = "weft-bench";

    /// <summary>The environment variable that names the <c>weft</c> executable to start instead of this build's weft.dll.</summary>
    public const string OverrideVariable = "WEFT_EXECUTABLE";

    public static (string File, IReadOnlyList<string> Arguments) Command(IEnumerable<string> args)
    {
        var list = args.ToList();
        var (program, rest) = list.FirstOrDefault() switch
        {
            "app" or "demo" => (Kit, list),
            "bench" => (Bench, list.Skip(1).ToList()),
            "bench-metrics" => (Bench, list.Skip(1).Prepend("render-metrics").ToList()),
            _ => (Agent, list),
        };
        return Command(program, rest);
    }

    public static (string File, IReadOnlyList<string> Arguments) Command(string program, IReadOnlyList<string> args) =>
        Command(program, args, Environment.GetEnvironmentVariable(OverrideVariable));

    /// <summary>As above, with the override given rather than read from the environment (tests run in parallel in one process).</summary>
    internal static (string File, IReadOnlyList<string> Arguments) Command(string program, IReadOnlyList<string> args, string? overridden)
    {
        if (program == Agent && overridden is { Length: > 0 })
        {
            return File.Exists(overridden) ? (Path.GetFullPath(overridden), args.ToArray())
                : throw new HarnessException($"{OverrideVariable}={overridden}: no such file (unset it to run this build's weft.dll)");
        }

        var self = Environment.ProcessPath;
        if (self != null && Path.GetFileName(self) == program)
        {
            return (self, args.ToArray());
        }

        var dll = Path.Combine(AppContext.BaseDirectory, program + ".dll");
        if (!File.Exists(dll))
        {
            throw new HarnessException($"{program}.dll is not in {AppContext.BaseDirectory}: build the project that runs this with a reference to it");
        }

        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host
            : self != null && Path.GetFileName(self) == "dotnet" ? self
            : "dotnet";
        return (dotnet, args.Prepend(dll).ToArray());
    }
}
