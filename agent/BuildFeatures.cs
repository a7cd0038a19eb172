using System.Diagnostics.CodeAnalysis;

namespace Weft;

/// <summary>
/// What this build of <c>weft</c> carries. The node agent's image is published twice from the same sources: the full
/// binary (every command) and <c>weft-agent</c>, published with <c>-p:WeftEdge=false</c>, which leaves out the two
/// commands that run on ASP.NET Core (<c>weft gateway</c> and <c>weft ca serve</c>): under NativeAOT their code, and
/// the runtime data that describes it, is then not in the binary at all, which takes about 10 MiB off an idle agent's
/// RSS (docs/benchmark.md, "The image's agent is NativeAOT").
/// </summary>
internal static class BuildFeatures
{
    private const string EdgeSwitch = "Weft.Edge.IsSupported";
    private const string ModelsSwitch = "Weft.KubernetesModels.IsSupported";

    /// <summary>Whether <c>weft gateway</c> and <c>weft ca serve</c> are in this build.</summary>
    [FeatureSwitchDefinition(EdgeSwitch)]
    internal static bool Edge => !AppContext.TryGetSwitch(EdgeSwitch, out var on) || on;

    /// <summary>
    /// Whether this build reads every kind KubernetesClient has a model for, or only the kinds Weft's own JSON metadata
    /// describes (<see cref="Weft.Inventory.KubernetesModelJson"/>). <c>weft-agent</c> (<c>-p:WeftEdge=false</c>) is the
    /// second: its NativeAOT publish leaves out KubernetesClient's generated metadata for all its models
    /// (<c>agent/Inventory/KubernetesClient.Substitutions.xml</c>), about 10 MiB of binary and 11 MiB of idle RSS, and
    /// its file inventory skips documents of the kinds it then cannot read, as it ignores them after reading elsewhere.
    /// </summary>
    [FeatureSwitchDefinition(ModelsSwitch)]
    internal static bool KubernetesModels => !AppContext.TryGetSwitch(ModelsSwitch, out var on) || on;
}
