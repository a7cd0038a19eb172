namespace Weft.Harness;

/// <summary>
/// How to start a Weft program of this build as a child process. The agent and CLI (<c>weft</c>), the
/// test kit (<c>weft-kit</c>: demo, peer app) and the benchmark (<c>weft-bench</c>) are separate
/// assemblies; the first argument says which: <c>app</c> and <c>demo</c> are the kit's, <c>bench</c> and
/// <c>bench-metrics</c> the benchmark's, everything else the agent's. A program runs as its apphost when
/// that is the current process, otherwise as <c>dotnet NAME.dll</c> from this build's output directory.
/// <see cref="OverrideVariable"/> (<c>WEFT_EXECUTABLE</c>) names another <c>weft</c> executable to run instead,
/// e.g. a NativeAOT publish, so the same tests run against it; <see cref="AgentVariable"/> (<c>WEFT_AGENT_EXECUTABLE</c>)
/// names the executable that runs <c>weft agent</c> alone, as the DaemonSet image's <c>weft-agent</c> does (a NativeAOT
/// publish without the gateway and the CA service: <c>tests/run.sh</c> builds one and runs the kernel and end-to-end
/// groups' agents with it).
/// </summary>
internal static class WeftExecutable
{
    public const string Agent = "weft";
    public const string Kit = "weft-kit";
    public const string Bench = "weft-bench";

    /// <summary>The environment variable that names the <c>weft</c> executable to start instead of this build's weft.dll.</summary>
    public const string OverrideVariable = "WEFT_EXECUTABLE";

    /// <summary>The environment variable that names the executable that runs <c>weft agent</c>, ahead of <see cref="OverrideVariable"/>.</summary>
    public const string AgentVariable = "WEFT_AGENT_EXECUTABLE";

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
        Command(program, args, Environment.GetEnvironmentVariable(OverrideVariable), Environment.GetEnvironmentVariable(AgentVariable));

    /// <summary>As above, with the overrides given rather than read from the environment (tests run in parallel in one process).</summary>
    internal static (string File, IReadOnlyList<string> Arguments) Command(string program, IReadOnlyList<string> args, string? overridden, string? agentOverridden = null)
    {
        var (file, variable) = program != Agent ? (null, null)
            : args is ["agent", ..] && agentOverridden is { Length: > 0 } ? (agentOverridden, AgentVariable)
            : overridden is { Length: > 0 } ? (overridden, OverrideVariable)
            : (null, null);
        if (file is not null)
        {
            return File.Exists(file) ? (Path.GetFullPath(file), args.ToArray())
                : throw new HarnessException($"{variable}={file}: no such file (unset it to run this build's weft.dll)");
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
