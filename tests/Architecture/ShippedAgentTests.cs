using System.Diagnostics;
using System.Reflection;
using Weft.Harness;
using Weft.Node;

namespace Weft.Tests.Architecture;

/// <summary>The agent that ships in the DaemonSet image holds what runs on a node or in the CLI, and nothing of the test kit.</summary>
public class ShippedAgentTests
{
    private static readonly Assembly Agent = typeof(NodeAgent).Assembly;

    [Fact]
    public void AgentAssembly_HasNoHarnessBenchOrDemoTypes()
    {
        var kit = Agent.GetTypes()
            .Where(t => t.Namespace is "Weft.Harness" or "Weft.Bench" or "Weft.Demo"
                || t.Name.Contains("Bench", StringComparison.Ordinal) || t.Name.Contains("Demo", StringComparison.Ordinal)
                || t.Name is "PeerApp" or "PeerServer" or "PeerSender" or "PeerHold" or "PeerRoundTrip" or "NetnsCluster" or "MeshCluster" or "WeftExecutable")
            .Select(t => t.FullName)
            .ToList();

        Assert.True(kit.Count == 0, "test kit types in the shipped agent: " + string.Join(", ", kit));
        Assert.Equal("weft", Agent.GetName().Name);
    }

    [Fact]
    public void AgentAssembly_ReferencesNeitherTheKitNorTheBenchmark()
    {
        var references = Agent.GetReferencedAssemblies().Select(a => a.Name).ToList();

        Assert.DoesNotContain("weft-kit", references);
        Assert.DoesNotContain("weft-bench", references);
        Assert.DoesNotContain(references, r => r!.StartsWith("xunit", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("demo")]
    [InlineData("bench")]
    [InlineData("app")]
    public void AgentCommandLine_DoesNotOfferTheKitsCommands(string command)
    {
        var (file, args) = WeftExecutable.Command(WeftExecutable.Agent, [command]);
        var info = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info)!;
        var stderr = process.StandardError.ReadToEnd();
        process.StandardOutput.ReadToEnd();
        process.WaitForExit();

        Assert.Equal(2, process.ExitCode);
        Assert.Contains($"unknown command '{command}'", stderr);
    }

    [Fact]
    public void AgentTypes_AreInternal_ExceptTheFewTheTestsTheoriesTakeAsParameters()
    {
        // xunit wants public test methods, so a type a theory takes as a parameter must be public too.
        string[] tracked = ["Weft.Capture.CgroupDriver", "Weft.Hbone.Http2ErrorCode", "Weft.Policy.ConnectionAttributes", "Weft.Telemetry.FlowFilter"];

        var exported = Agent.GetExportedTypes().Select(t => t.FullName!).Order(StringComparer.Ordinal).ToArray();

        Assert.Equal(tracked.Order(StringComparer.Ordinal), exported);
    }
}
