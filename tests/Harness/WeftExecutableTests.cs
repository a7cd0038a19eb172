using Weft.Harness;

namespace Weft.Tests.Harness;

public sealed class WeftExecutableTests
{
    [Fact]
    public void Override_RunsThatFileForAgentCommands_WithTheArgumentsUnchanged()
    {
        var file = Path.GetTempFileName();
        try
        {
            var (started, args) = WeftExecutable.Command(WeftExecutable.Agent, ["agent", "--node", "node1"], file);

            Assert.Equal(Path.GetFullPath(file), started);
            Assert.Equal(["agent", "--node", "node1"], args);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public void Override_LeavesTheKitsProgramsAlone()
    {
        var file = Path.GetTempFileName();
        try
        {
            var (started, args) = WeftExecutable.Command(WeftExecutable.Kit, ["app", "serve"], file);

            Assert.NotEqual(Path.GetFullPath(file), started);
            Assert.Contains(args, a => a.EndsWith("weft-kit.dll", StringComparison.Ordinal));
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public void Override_NamingNoFile_IsRefusedWithTheVariableNamed()
    {
        var missing = Path.Combine(Path.GetTempPath(), $"weft-missing-{Guid.NewGuid():N}");

        var error = Assert.Throws<HarnessException>(() => WeftExecutable.Command(WeftExecutable.Agent, ["agent"], missing));

        Assert.Contains($"WEFT_EXECUTABLE={missing}: no such file", error.Message);
    }

    [Fact]
    public void AgentOverride_RunsTheAgentCommandOnly_AheadOfTheGeneralOverride()
    {
        var agent = Path.GetTempFileName();
        var general = Path.GetTempFileName();
        try
        {
            var (started, args) = WeftExecutable.Command(WeftExecutable.Agent, ["agent", "--node", "node1"], general, agent);
            Assert.Equal(Path.GetFullPath(agent), started);
            Assert.Equal(["agent", "--node", "node1"], args);

            // The agent-only build has no gateway and no CA service: every other command runs the general one, or this build's.
            Assert.Equal(Path.GetFullPath(general), WeftExecutable.Command(WeftExecutable.Agent, ["gateway", "--inventory", "f"], general, agent).File);
            var (own, ownArgs) = WeftExecutable.Command(WeftExecutable.Agent, ["ca", "serve"], null, agent);
            Assert.NotEqual(Path.GetFullPath(agent), own);
            Assert.Contains(ownArgs, a => a.EndsWith("weft.dll", StringComparison.Ordinal));
        }
        finally
        {
            File.Delete(agent);
            File.Delete(general);
        }
    }

    [Fact]
    public void AgentOverride_NamingNoFile_IsRefusedWithItsVariableNamed()
    {
        var missing = Path.Combine(Path.GetTempPath(), $"weft-missing-{Guid.NewGuid():N}");

        var error = Assert.Throws<HarnessException>(() => WeftExecutable.Command(WeftExecutable.Agent, ["agent"], null, missing));

        Assert.Contains($"WEFT_AGENT_EXECUTABLE={missing}: no such file", error.Message);
    }
}
