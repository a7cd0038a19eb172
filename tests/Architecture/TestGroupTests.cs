using System.Reflection;

namespace Weft.Tests.Architecture;

/// <summary>The unit group runs as an ordinary user: every test that needs root is marked so and sits in the kernel or e2e group.</summary>
public class TestGroupTests
{
    private static IEnumerable<MethodInfo> TestMethods() =>
        typeof(TestGroupTests).Assembly.GetTypes()
            .Where(t => !t.IsAbstract || t.IsSealed)
            .SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.Instance | BindingFlags.DeclaredOnly))
            .Where(m => m.GetCustomAttributes<FactAttribute>(inherit: true).Any());

    private static string? GroupOf(Type type) => type.GetCustomAttributesData()
        .Where(a => a.AttributeType == typeof(TraitAttribute) && (string?)a.ConstructorArguments[0].Value == TestGroups.Trait)
        .Select(a => (string?)a.ConstructorArguments[1].Value)
        .FirstOrDefault();

    [Fact]
    public void PrivilegedTests_AreInTheKernelOrEndToEndGroup_AndThoseGroupsHoldOnlyPrivilegedTests()
    {
        var wrong = new List<string>();
        foreach (var method in TestMethods())
        {
            // The shipped agent binary's facts need what only the root groups' run publishes (tests/agent-aot.sh).
            var privileged = method.GetCustomAttributes().Any(a => a is PrivilegedFactAttribute or PrivilegedTheoryAttribute or AgentBinaryFactAttribute);
            var group = GroupOf(method.DeclaringType!);
            var inPrivilegedGroup = group is TestGroups.Kernel or TestGroups.EndToEnd;
            if (privileged != inPrivilegedGroup)
            {
                wrong.Add($"{method.DeclaringType!.Name}.{method.Name}: {(privileged ? "privileged" : "plain")} test in group '{group ?? "unit"}'");
            }
        }

        Assert.True(wrong.Count == 0, string.Join('\n', wrong));
    }

    [Fact]
    public void PrivilegedTest_AsAnOrdinaryUserOutsideCi_SkipsWithTheReason()
    {
        var attribute = new PrivilegedFactAttribute();

        if (Environment.IsPrivilegedProcess || Privileged.InCi)
        {
            Assert.Null(attribute.Skip);
        }
        else
        {
            Assert.Contains("needs root", attribute.Skip);
        }
    }
}
