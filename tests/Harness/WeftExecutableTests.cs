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
}
