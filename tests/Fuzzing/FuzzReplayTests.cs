using System.Runtime.CompilerServices;
using Weft.Fuzz;

namespace Weft.Tests.Fuzzing;

/// <summary>
/// Every committed fuzzing input (tests/Fuzz/corpus: the seeds; tests/Fuzz/regressions: inputs that once
/// crashed or hung a parser) goes through the same harness AFL++ runs, and must end with at most the
/// parser's own error for bad input.
/// </summary>
public class FuzzReplayTests
{
    private static string FuzzDirectory([CallerFilePath] string here = "") =>
        Path.GetFullPath(Path.Combine(Path.GetDirectoryName(here)!, "..", "Fuzz"));

    public static TheoryData<string, string> Inputs()
    {
        var data = new TheoryData<string, string>();
        foreach (var kind in new[] { "corpus", "regressions" })
        {
            var root = Path.Combine(FuzzDirectory(), kind);
            if (!Directory.Exists(root))
            {
                continue;
            }

            foreach (var file in Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
            {
                data.Add(Path.GetFileName(Path.GetDirectoryName(file)!), Path.GetRelativePath(FuzzDirectory(), file));
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Inputs))]
    public void CommittedInput_EndsWithoutAnUnexpectedException(string target, string file)
    {
        var harness = FuzzTargets.Find(target);
        Assert.True(harness is not null, $"{file} is in a folder named after no fuzzing target");

        harness.Run(File.ReadAllBytes(Path.Combine(FuzzDirectory(), file)));
    }

    [Fact]
    public void EveryTarget_HasACommittedSeedCorpus()
    {
        foreach (var target in FuzzTargets.All)
        {
            var corpus = Path.Combine(FuzzDirectory(), "corpus", target.Name);
            Assert.True(Directory.Exists(corpus) && Directory.EnumerateFiles(corpus).Any(), $"no seed corpus for {target.Name} in {corpus}");
        }
    }

    [Fact]
    public void RunScript_KnowsEveryTarget()
    {
        var script = File.ReadAllText(Path.Combine(FuzzDirectory(), "run.sh"));
        var line = script.Split('\n').Single(l => l.StartsWith("targets=", StringComparison.Ordinal));

        Assert.Equal(FuzzTargets.All.Select(t => t.Name).Order(StringComparer.Ordinal),
            line["targets=\"".Length..^1].Split(' ').Order(StringComparer.Ordinal));
    }
}
