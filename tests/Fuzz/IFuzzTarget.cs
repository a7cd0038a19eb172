namespace Weft.Fuzz;

/// <summary>
/// One parser under fuzzing: input bytes in, the parser's own errors for bad input caught inside
/// <see cref="Run"/>; any other exception escaping it is a crash (AFL++ records the input).
/// </summary>
internal interface IFuzzTarget
{
    /// <summary>The name used by run.sh and the corpus folders (corpus/NAME, regressions/NAME).</summary>
    string Name { get; }

    /// <summary>What the target reads, for the usage text.</summary>
    string Description { get; }

    void Run(ReadOnlySpan<byte> input);

    /// <summary>A few well-formed inputs to start from; written by <c>weft-fuzz seeds</c> into corpus/NAME.</summary>
    IEnumerable<(string Name, byte[] Content)> Seeds();

    /// <summary>
    /// Runs once before fuzzing starts: builds what the target's first execution would (a CA, keys, an in-memory
    /// API server) and compiles the code it runs, so the first input is not mistaken for a hang. By default, every seed once.
    /// </summary>
    void Prepare()
    {
        foreach (var (_, content) in Seeds())
        {
            Run(content);
        }
    }
}

/// <summary>Every fuzzing target, by name.</summary>
internal static class FuzzTargets
{
    public static IReadOnlyList<IFuzzTarget> All { get; } =
    [
        new Http2ConnectionTarget(),
        new HboneRequestTarget(),
        new InventoryYamlTarget(),
        new PolicyTarget(),
        new KubernetesWatchTarget(),
        new CaCsrTarget(),
        new CaTokenTarget(),
        new GatewayRoutesTarget(),
    ];

    public static IFuzzTarget? Find(string name) => All.FirstOrDefault(t => t.Name == name);
}
